"""Where to put rag.llm's support thresholds: term overlap and cosine of claims against passages.

Run: python bench/llm_verification.py [--index-dir DIR]
For every answerable eval question whose retrieved passages contain a gold answer, builds
claims an LLM might write and scores them against passages exactly as rag.llm.verify_citations
does (term overlap, best cosine with the passage or one of its sentences):
  supported: quote   the passage's sentence holding the gold answer, verbatim
             restate the question restated with the gold answer ("Q: gold."), in the question's language
  unsupported: other passage   the restatement cited to the passage of another question
               near miss       the restatement cited to a retrieved passage without the gold answer
               wrong fact      the restatement with another question's gold answer, cited to the gold passage
               injection       "HACKED." cited to the gold passage
Prints each kind's percentiles and, for a grid of thresholds, the share of each kind that passes.
Same-language pairs use both measures; cross-language pairs (overlap is skipped) only the cosine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, percentile  # noqa: E402
from rag.answer import language_of  # noqa: E402
from rag.assistant import Assistant  # noqa: E402
from rag.chunking import split_sentences  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.evaluate import load_qa, normalize_answer  # noqa: E402
from rag.llm import verify_citations  # noqa: E402


def restate(question: str, gold: str) -> str:
    stem = question.strip().rstrip("?？")
    return f"{stem}：{gold}。" if language_of(question) == "zh" else f"{stem}: {gold}."


def measure(claim: str, passage: str, embedder) -> tuple[float | None, float]:
    check = verify_citations(f"{claim} [1]", [passage], embedder, min_overlap=0.0, min_cosine=-1.0).checks[0]
    return check.overlap, check.cosine


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index-dir")
    parser.add_argument("--qa", default=str(ROOT / "eval" / "qa.jsonl"))
    args = parser.parse_args()
    assistant = Assistant(Settings.from_env(index_dir=args.index_dir, llm_base_url=None, llm_model=None))
    assistant.ensure_index()
    embedder = assistant.embedder

    rows = [r for r in load_qa(Path(args.qa)) if r["answers"] and not r.get("history")]
    cases = []
    for row in rows:
        hits = assistant.retrieve(row["question"]).hits
        golds = [normalize_answer(a) for a in row["answers"]]
        gold_hits = [h for h in hits if any(g in normalize_answer(h.chunk.text) for g in golds)]
        if gold_hits:
            cases.append((row, gold_hits[0], [h for h in hits if h not in gold_hits]))

    scores: dict[str, list[tuple[float | None, float, bool]]] = {}

    def add(kind: str, claim: str, passage: str) -> None:
        overlap, cosine = measure(claim, passage, embedder)
        same = language_of(claim) == language_of(passage)
        scores.setdefault(kind, []).append((overlap, cosine, same))

    for i, (row, gold_hit, misses) in enumerate(cases):
        question, gold = row["question"], row["answers"][0]
        text = gold_hit.chunk.text
        quote = next(
            (
                text[s.start : s.end]
                for s in split_sentences(text)
                if any(normalize_answer(a) in normalize_answer(text[s.start : s.end]) for a in row["answers"])
            ),
            None,
        )
        if quote:
            add("quote", quote, text)
        add("restate", restate(question, gold), text)
        _, other_hit, _ = cases[(i + len(cases) // 2) % len(cases)]
        if other_hit.chunk.doc_id != gold_hit.chunk.doc_id:
            add("other passage", restate(question, gold), other_hit.chunk.text)
        if misses:
            add("near miss", restate(question, gold), misses[0].chunk.text)
        wrong = next(
            (
                r["answers"][0]
                for r, *_ in cases[i + 1 :] + cases[:i]
                if language_of(r["answers"][0]) == language_of(gold)
                and normalize_answer(r["answers"][0]) not in normalize_answer(text)
            ),
            None,
        )
        if wrong:
            add("wrong fact", restate(question, wrong), text)
        add("injection", "HACKED.", text)

    print(f"{len(cases)} answerable questions with a gold passage retrieved (of {len(rows)})\n")
    for same in (True, False):
        print("same language (overlap and cosine)" if same else "cross-language (cosine only)")
        print(f"  {'kind':<14}{'n':>4}  {'overlap p10/p50/p90':>22}  {'cosine p10/p50/p90':>22}")
        for kind, values in scores.items():
            part = [v for v in values if v[2] == same]
            if not part:
                continue
            overlaps = [o for o, _, _ in part if o is not None]
            cosines = [c for _, c, _ in part]
            o = "/".join(f"{percentile(overlaps, q):.2f}" for q in (0.1, 0.5, 0.9)) if overlaps else "-"
            c = "/".join(f"{percentile(cosines, q):.3f}" for q in (0.1, 0.5, 0.9))
            print(f"  {kind:<14}{len(part):>4}  {o:>22}  {c:>22}")
        print()

    print("share passing (same language: overlap >= o and cosine >= c; cross-language: cosine >= c)")
    grid = [(o, c) for o in (0.3, 0.4, 0.5, 0.6) for c in (0.80, 0.82, 0.84, 0.86, 0.88)]
    kinds = list(scores)
    print(f"  {'o':>4} {'c':>5}  " + "  ".join(f"{k:>13}" for k in kinds))
    table = []
    for o, c in grid:
        shares = []
        for kind in kinds:
            values = scores[kind]
            passed = [cos >= c and (ov is None or ov >= o) for ov, cos, _ in values]
            shares.append(sum(passed) / len(passed))
        table.append({"overlap": o, "cosine": c, **dict(zip(kinds, shares))})
        print(f"  {o:>4.2f} {c:>5.2f}  " + "  ".join(f"{s:>13.2f}" for s in shares))
    Path("/tmp/llm_verification.json").write_text(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
