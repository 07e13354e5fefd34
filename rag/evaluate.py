"""Evaluation: known Q&A pairs -> retrieval, answer, citation, abstention and latency metrics.

The primary metric is `answer_accuracy`: the normalised answer contains the gold answer(s),
and an unanswerable question counts as correct only when the assistant abstained. Every
metric is also broken down by tag, and each question's row is kept for inspection. Trade-off:
containment scoring rewards quoting a longer passage; citation precision and the answer length
in each row keep that visible.
"""

from __future__ import annotations

import json
import math
import re
import sys
import unicodedata
from collections.abc import Iterable
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from rag.answer import check_citations
from rag.assistant import Assistant

PRIMARY_METRIC = "answer_accuracy"
HIT_DEPTHS = (1, 3, 5, 10)


# --------------------------------------------------------------------------- data


def load_qa(path: Path, skip_bad: bool = False) -> list[dict]:
    """Read a JSONL eval file, checking each row's shape; errors name the line.

    With `skip_bad`, a row without an id or question is left out with a warning (training data
    from elsewhere); an eval file must be whole.
    """
    rows = []
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not valid JSON ({exc})") from exc
            missing = [k for k in ("id", "question") if not isinstance(row.get(k), str) or not row[k].strip()]
            if missing and skip_bad:
                print(f"{path}:{number}: skipped, missing {missing[0]!r}", file=sys.stderr)
                continue
            if missing:
                raise ValueError(f"{path}:{number}: missing {missing[0]!r}")
            if "answers" in row and row["answers"] is None:
                # `rag feedback export` leaves it null for a person to fill in; [] means "should abstain".
                raise ValueError(f"{path}:{number}: fill in 'answers' (or [] when the documents do not answer it)")
            row.setdefault("answers", [])
            row.setdefault("doc_ids", [])
            row.setdefault("tags", [])
            row.setdefault("match", "any")
            if row["match"] not in ("any", "all"):
                raise ValueError(f"{path}:{number}: match must be 'any' or 'all'")
            rows.append(row)
    return rows


def normalize_answer(text: str) -> str:
    """NFKC (folds full-width digits and letters), case-folded, whitespace collapsed."""
    return re.sub(r"\s+", " ", unicodedata.normalize("NFKC", text).casefold()).strip()


def contains_gold(answer: str, gold: list[str], match: str) -> bool:
    text = normalize_answer(answer)
    found = [normalize_answer(g) in text for g in gold]
    return all(found) if match == "all" else any(found)


# --------------------------------------------------------------------------- running


def evaluate_row(assistant: Assistant, row: dict) -> dict:
    answer, retrieval = assistant.ask_detailed(row["question"], depth=max(HIT_DEPTHS), history=row.get("history") or ())
    gold_docs = set(row["doc_ids"])
    answerable = bool(row["answers"])
    doc_rank = next((i + 1 for i, h in enumerate(retrieval.hits) if h.chunk.doc_id in gold_docs), None)
    gold_norm = [normalize_answer(a) for a in row["answers"]]
    evidence_rank = next(
        (i + 1 for i, h in enumerate(retrieval.hits) if any(g in normalize_answer(h.chunk.text) for g in gold_norm)),
        None,
    )
    contains = answerable and not answer.abstained and contains_gold(answer.answer, row["answers"], row["match"])
    # Which quoted sentences hold a gold answer: an answer quoting a wrong sentence and a right one
    # is right by containment, but not first-quote accurate, and only half precise.
    quotes_with_gold = [answerable and contains_gold(q, row["answers"], "any") for q in answer.quotes]
    # Would the answer be right if it had not abstained? Lets calibration sweep the threshold.
    return {
        "id": row["id"],
        "question": row["question"],
        "history": row.get("history", []),
        "tags": row["tags"],
        "answerable": answerable,
        "gold_answers": row["answers"],
        "gold_doc_ids": row["doc_ids"],
        "answer": answer.answer,
        "abstained": answer.abstained,
        "correct": (answer.abstained if not answerable else contains),
        "quotes_with_gold": quotes_with_gold,
        "cited_doc_ids": [c.doc_id for c in answer.citations],
        "citations_valid": not check_citations(answer),
        "doc_rank": doc_rank,
        "evidence_rank": evidence_rank,
        "evidence": answer.evidence,
        "timings_ms": answer.timings_ms,
    }


def language_direction(tags: list[str]) -> str | None:
    """ "en→zh" for an English question whose answer is in Chinese text (tags q-en and doc-zh)."""
    question = next((t[2:] for t in tags if t in ("q-en", "q-zh")), None)
    document = next((t[4:] for t in tags if t in ("doc-en", "doc-zh")), None)
    return f"{question}→{document}" if question and document else None


def sliced_metrics(results: list[dict]) -> dict:
    """The metrics of every row, then of each tag's rows ("by_tag") and each language direction's ("by_direction")."""
    out = metrics(results)
    tags = sorted({t for r in results for t in r["tags"]})
    out["by_tag"] = {tag: metrics([r for r in results if tag in r["tags"]]) for tag in tags}
    directions: dict[str, list[dict]] = {}
    for r in results:
        direction = language_direction(r["tags"])
        if direction:
            directions.setdefault(direction, []).append(r)
    out["by_direction"] = {d: metrics(rows) for d, rows in sorted(directions.items())}
    return out


def run_eval(assistant: Assistant, qa_paths: Path | list[Path], progress: bool = False) -> dict:
    paths = [qa_paths] if isinstance(qa_paths, Path) else list(qa_paths)
    rows = [row for path in paths for row in load_qa(path)]
    ids = [row["id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"question ids repeat across {', '.join(map(str, paths))}")
    from tqdm import tqdm

    results = [
        evaluate_row(assistant, row) for row in tqdm(rows, desc="eval", unit="q", file=sys.stderr, disable=not progress)
    ]
    report = {"qa_file": " + ".join(map(str, paths)), "primary_metric": PRIMARY_METRIC}
    report.update(sliced_metrics(results))
    report["settings"] = {k: str(v) for k, v in asdict(assistant.settings).items()}
    manifest = dict(assistant.index.manifest)
    manifest.pop("checksums", None)
    report["index_manifest"] = manifest
    report["created"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report["questions"] = results
    return report


# --------------------------------------------------------------------------- metrics


def _mean(values: Iterable[float]) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else None


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo), 2)


def _ranking(ranks: list[int | None]) -> dict:
    out = {f"hit@{k}": _mean(1.0 if r is not None and r <= k else 0.0 for r in ranks) for k in HIT_DEPTHS}
    out["mrr"] = _mean(1.0 / r if r is not None else 0.0 for r in ranks)
    return out


def metrics(results: list[dict]) -> dict:
    answerable = [r for r in results if r["answerable"]]
    unanswerable = [r for r in results if not r["answerable"]]
    answered = [r for r in results if not r["abstained"]]
    abstained = [r for r in results if r["abstained"]]
    answered_answerable = [r for r in answered if r["answerable"]]
    quotes = [ok for r in answered_answerable for ok in r.get("quotes_with_gold", [])]
    cited = [d for r in answered if r["answerable"] for d in r["cited_doc_ids"]]
    gold_cited = [d for r in answered if r["answerable"] for d in r["cited_doc_ids"] if d in r["gold_doc_ids"]]
    return {
        "n": len(results),
        "answer_accuracy": _mean(1.0 if r["correct"] else 0.0 for r in results),
        "answerable_accuracy": _mean(1.0 if r["correct"] else 0.0 for r in answerable),
        # The first quoted sentence holds a gold answer (an abstention on an answerable question counts as a miss).
        "first_quote_accuracy": _mean(
            1.0 if r.get("quotes_with_gold") and r["quotes_with_gold"][0] else 0.0 for r in answerable
        ),
        "quote_precision": _mean(1.0 if ok else 0.0 for ok in quotes),
        "citation_precision": round(len(gold_cited) / len(cited), 4) if cited else None,
        "citation_validity": _mean(1.0 if r["citations_valid"] else 0.0 for r in answered),
        "abstention": {
            "precision": _mean(0.0 if r["answerable"] else 1.0 for r in abstained),
            "recall": _mean(1.0 if r["abstained"] else 0.0 for r in unanswerable),
            "false_rate": _mean(1.0 if r["abstained"] else 0.0 for r in answerable),
        },
        "retrieval": {
            "doc": _ranking([r["doc_rank"] for r in answerable]),
            "evidence": _ranking([r["evidence_rank"] for r in answerable]),
        },
        "latency_ms": {
            stage: {
                "p50": _percentile([r["timings_ms"][stage] for r in results], 0.5),
                "p95": _percentile([r["timings_ms"][stage] for r in results], 0.95),
            }
            for stage in ("retrieve", "answer", "total")
        },
    }


# --------------------------------------------------------------------------- calibration


def sweep_threshold(results: list[dict], thresholds: Iterable[float]) -> list[tuple[float, float]]:
    """(threshold, accuracy) for each threshold, from rows evaluated without abstention.

    Rows must come from a run with a threshold low enough that nothing abstained, so each row
    tells whether its answer was right; abstaining at t then just replaces answers whose
    evidence is below t.
    """
    out = []
    for t in thresholds:
        correct = 0
        for r in results:
            if r["evidence"] < t:
                correct += not r["answerable"]
            else:
                correct += r["answerable"] and r["correct"]
        out.append((round(t, 4), round(correct / max(len(results), 1), 4)))
    return out


def calibrate(results: list[dict], holdout_tag: str = "heldout") -> dict:
    """Choose the abstention threshold on rows without `holdout_tag`; report both parts.

    Ties go to the middle of the best plateau, so the threshold is not pressed against a
    single question's score.
    """
    tune = [r for r in results if holdout_tag not in r["tags"]]
    held = [r for r in results if holdout_tag in r["tags"]]
    scores = sorted({round(r["evidence"], 4) for r in results})
    candidates = [scores[0] - 0.01] + [(a + b) / 2 for a, b in zip(scores, scores[1:])] + [scores[-1] + 0.01]
    sweep = sweep_threshold(tune, candidates)
    best = max(acc for _, acc in sweep)
    plateau = [t for t, acc in sweep if acc == best]
    chosen = plateau[len(plateau) // 2]
    return {
        "threshold": round(chosen, 3),
        "tune_accuracy": best,
        "heldout_accuracy": sweep_threshold(held, [chosen])[0][1],
        "tune_n": len(tune),
        "heldout_n": len(held),
        "sweep": sweep,
    }


# --------------------------------------------------------------------------- output


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def summary_table(report: dict) -> str:
    """A markdown table of the headline metrics, overall and per tag."""
    header = (
        "| slice | n | answer acc | answerable acc | first-quote acc | quote prec | evidence hit@5 | doc hit@5 | "
        "citation prec | abstain P/R | false abstain | total p50 ms |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [header]
    slices = [("all", report)] + list(report.get("by_direction", {}).items()) + list(report["by_tag"].items())
    for name, m in slices:
        ab = m["abstention"]
        lines.append(
            f"| {name} | {m['n']} | {_fmt(m['answer_accuracy'])} | {_fmt(m.get('answerable_accuracy'))} | "
            f"{_fmt(m.get('first_quote_accuracy'))} | "
            f"{_fmt(m.get('quote_precision'))} | {_fmt(m['retrieval']['evidence']['hit@5'])} | "
            f"{_fmt(m['retrieval']['doc']['hit@5'])} | {_fmt(m['citation_precision'])} | "
            f"{_fmt(ab['precision'])}/{_fmt(ab['recall'])} | {_fmt(ab['false_rate'])} | "
            f"{_fmt(m['latency_ms']['total']['p50'])} |"
        )
    return "\n".join(lines)


def _report_markdown(report: dict) -> str:
    lines = [
        f"# Eval report: {report['qa_file']}",
        "",
        f"Created {report['created']} with model `{report['index_manifest']['model']['name']}`; "
        f"primary metric `{report['primary_metric']}` = {_fmt(report['answer_accuracy'])}; "
        f"citation validity {_fmt(report['citation_validity'])}.",
        "",
        summary_table(report),
        "",
        "## Latency (ms)",
        "",
        "| stage | p50 | p95 |",
        "|---|---|---|",
    ]
    for stage, v in report["latency_ms"].items():
        lines.append(f"| {stage} | {_fmt(v['p50'])} | {_fmt(v['p95'])} |")
    lines += ["", "## Questions", "", "| id | ok | question | answer | cited | doc rank |", "|---|---|---|---|---|---|"]
    for r in report["questions"]:
        answer = r["answer"].replace("|", "\\|").replace("\n", " ")
        question = r["question"].replace("|", "\\|")
        lines.append(
            f"| {r['id']} | {'yes' if r['correct'] else 'NO'} | {question} | {answer[:160]} | "
            f"{', '.join(sorted(set(r['cited_doc_ids'])))} | {_fmt(r['doc_rank'])} |"
        )
    return "\n".join(lines) + "\n"


def _write_chart(report: dict, path: Path) -> None:
    """Two bar panels, accuracy and p50 latency by tag, drawn with Pillow.

    Pillow, not matplotlib: it is already installed (Gradio needs it) and imports in ~5 ms, where
    matplotlib and its own dependencies add 76 MB to an install and ~0.5 s to the import, for
    two bar charts.
    """
    from PIL import Image, ImageDraw, ImageFont

    tags = list(report["by_tag"])
    panels = [
        (
            f"answer accuracy by tag (all: {report['answer_accuracy']:.3f})",
            [report["by_tag"][t]["answer_accuracy"] or 0.0 for t in tags],
            1.0,
            "#4a7fb5",
            "{:.3f}",
        ),
        (
            "total latency p50 (ms) by tag",
            [report["by_tag"][t]["latency_ms"]["total"]["p50"] or 0.0 for t in tags],
            None,
            "#c0804a",
            "{:.1f}",
        ),
    ]
    font = ImageFont.load_default(size=14)
    row, top, label_w, bar_w, gap = 24, 40, 120, 380, 30
    width = 2 * (label_w + bar_w + gap) + gap
    image = Image.new("RGB", (width, top + row * len(tags) + 20), "white")
    draw = ImageDraw.Draw(image)
    for i, (title, values, scale, color, fmt) in enumerate(panels):
        x0 = gap + i * (label_w + bar_w + gap)
        scale = scale or max(values, default=0.0) or 1.0
        draw.text((x0, 12), title, fill="black", font=font)
        for j, (tag, value) in enumerate(zip(tags, values)):
            y = top + j * row
            draw.text((x0, y + 4), tag, fill="#333333", font=font)
            length = int(bar_w * 0.85 * min(value / scale, 1.0))
            draw.rectangle((x0 + label_w, y + 2, x0 + label_w + length, y + row - 4), fill=color)
            draw.text((x0 + label_w + length + 4, y + 4), fmt.format(value), fill="#333333", font=font)
        draw.line((x0 + label_w, top - 4, x0 + label_w, top + row * len(tags)), fill="#999999")
    image.save(path)


def write_report(report: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, ensure_ascii=False, indent=1), encoding="utf-8")
    (out_dir / "report.md").write_text(_report_markdown(report), encoding="utf-8")
    _write_chart(report, out_dir / "report.png")


# --------------------------------------------------------------------------- gate and compare


def _flatten(metrics_: dict, prefix: str = "") -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in metrics_.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, name + "."))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = value
    return flat


def check_thresholds(report: dict, thresholds: dict, section: str | None = None) -> list[str]:
    """Failures of `report` against floors like {"answer_accuracy": 0.8, "by_tag.xling.answer_accuracy": 0.7}.

    A name written "max NAME" is a ceiling instead (a rate that must stay low). The file's
    top-level entries are the bundled eval's; `section` picks another eval's ({"xquad": {...}}).
    """
    if section is not None:
        if not isinstance(thresholds.get(section), dict):
            raise ValueError(f"the thresholds file has no section {section!r}")
        thresholds = thresholds[section]
    flat = _flatten({k: v for k, v in report.items() if k not in ("questions", "settings", "index_manifest")})
    failures = []
    for key, limit in thresholds.items():
        if key.startswith("_") or isinstance(limit, dict):
            continue  # comments, and other evals' sections
        ceiling = key.startswith("max ")
        name = key.removeprefix("max ")
        value = flat.get(name)
        if value is None:
            failures.append(f"{name}: missing from the report")
        elif ceiling and value > limit:
            failures.append(f"{name}: {value:.4f} is above the ceiling {limit}")
        elif not ceiling and value < limit:
            failures.append(f"{name}: {value:.4f} is below the floor {limit}")
    return failures


def compare_reports(path_a: Path, path_b: Path) -> str:
    a = json.loads(path_a.read_text(encoding="utf-8"))
    b = json.loads(path_b.read_text(encoding="utf-8"))
    skip = ("questions", "settings", "index_manifest", "n")
    flat_a = _flatten({k: v for k, v in a.items() if k not in skip})
    flat_b = _flatten({k: v for k, v in b.items() if k not in skip})
    lines = [f"A = {path_a}", f"B = {path_b}", "", f"{'metric':<52} {'A':>9} {'B':>9} {'B-A':>9}"]
    for name in sorted(set(flat_a) | set(flat_b)):
        va, vb = flat_a.get(name), flat_b.get(name)
        if va == vb:
            continue
        delta = f"{vb - va:+.3f}" if va is not None and vb is not None else "-"
        lines.append(f"{name:<52} {_fmt(va):>9} {_fmt(vb):>9} {delta:>9}")
    rows_a = {r["id"]: r for r in a.get("questions", [])}
    flips = [
        (r["id"], rows_a[r["id"]]["correct"], r["correct"])
        for r in b.get("questions", [])
        if r["id"] in rows_a and rows_a[r["id"]]["correct"] != r["correct"]
    ]
    if flips:
        lines += ["", "questions that changed:"]
        lines += [f"  {qid}: {'right' if was else 'wrong'} -> {'right' if now else 'wrong'}" for qid, was, now in flips]
    return "\n".join(lines)
