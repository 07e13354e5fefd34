"""The eval suite's scoring, metrics, calibration, gate and comparison, on fixed rows."""

import json

import pytest

from rag import evaluate


def _row(
    qid,
    answerable=True,
    correct=True,
    abstained=False,
    evidence=1.0,
    tags=(),
    doc_rank=1,
    evidence_rank=1,
    cited=("a.txt",),
    gold=("a.txt",),
    total=10.0,
):
    return {
        "id": qid,
        "question": qid,
        "tags": list(tags),
        "answerable": answerable,
        "answer": "x",
        "abstained": abstained,
        "correct": correct,
        "cited_doc_ids": list(cited) if not abstained else [],
        "gold_doc_ids": list(gold) if answerable else [],
        "citations_valid": True,
        "doc_rank": doc_rank if answerable else None,
        "evidence_rank": evidence_rank if answerable else None,
        "evidence": evidence,
        "timings_ms": {"retrieve": total / 2, "answer": total / 2, "total": total},
    }


def test_normalized_containment_folds_width_case_and_space():
    assert evaluate.contains_gold("展示了５８５项  成果", ["585"], "any")
    assert evaluate.contains_gold("held in  HEFEI city", ["Hefei city"], "any")
    assert not evaluate.contains_gold("held in Hefei", ["Hefei", "Anhui"], "all")
    assert evaluate.contains_gold("Hefei, Anhui", ["Hefei", "Anhui"], "all")


def test_metrics_on_fixed_rows():
    rows = [
        _row("q1"),
        _row("q2", correct=False, doc_rank=3, evidence_rank=None, cited=("b.txt",)),
        _row("q3", answerable=False, abstained=True, correct=True),
        _row("q4", answerable=False, abstained=False, correct=False, cited=("a.txt",)),
        _row("q5", abstained=True, correct=False, doc_rank=None, evidence_rank=None),
    ]
    m = evaluate.metrics(rows)
    assert m["n"] == 5
    assert m["answer_accuracy"] == pytest.approx(2 / 5)
    # Answered answerable rows cite a.txt (gold) and b.txt (not gold).
    assert m["citation_precision"] == pytest.approx(0.5)
    assert m["abstention"] == {"precision": 0.5, "recall": 0.5, "false_rate": pytest.approx(1 / 3, abs=1e-4)}
    assert m["retrieval"]["doc"]["hit@1"] == pytest.approx(1 / 3, abs=1e-4)
    assert m["retrieval"]["doc"]["hit@3"] == pytest.approx(2 / 3, abs=1e-4)
    assert m["retrieval"]["doc"]["mrr"] == pytest.approx((1 + 1 / 3) / 3, abs=1e-4)
    assert m["retrieval"]["evidence"]["hit@10"] == pytest.approx(1 / 3, abs=1e-4)
    assert m["latency_ms"]["total"]["p50"] == 10.0


def test_threshold_sweep_and_calibration_keep_heldout_out():
    rows = [
        _row("a", evidence=0.9),
        _row("b", evidence=0.8),
        _row("c", answerable=False, correct=False, evidence=0.5),
        _row("d", answerable=False, correct=False, evidence=0.6, tags=["heldout"]),
        _row("e", evidence=0.55, tags=["heldout"]),
    ]
    sweep = dict(evaluate.sweep_threshold(rows[:3], [0.0, 0.7, 0.95]))
    assert sweep == {0.0: pytest.approx(2 / 3, abs=1e-4), 0.7: 1.0, 0.95: pytest.approx(1 / 3, abs=1e-4)}
    result = evaluate.calibrate(rows)
    assert 0.5 < result["threshold"] < 0.8
    assert result["tune_n"] == 3 and result["heldout_n"] == 2
    assert result["tune_accuracy"] == 1.0


def test_threshold_gate_reports_each_failure():
    report = {"answer_accuracy": 0.7, "by_tag": {"xling": {"answer_accuracy": 0.9}}, "questions": []}
    floors = {
        "_comment": "ignored",
        "answer_accuracy": 0.75,
        "by_tag.xling.answer_accuracy": 0.8,
        "citation_precision": 0.5,
    }
    failures = evaluate.check_thresholds(report, floors)
    assert len(failures) == 2
    assert failures[0].startswith("answer_accuracy: 0.7000 is below the floor 0.75")
    assert failures[1] == "citation_precision: missing from the report"


def test_compare_prints_metric_deltas_and_flipped_questions(tmp_path):
    a = {"answer_accuracy": 0.5, "questions": [{"id": "q1", "correct": True}, {"id": "q2", "correct": False}]}
    b = {"answer_accuracy": 0.75, "questions": [{"id": "q1", "correct": True}, {"id": "q2", "correct": True}]}
    (tmp_path / "a.json").write_text(json.dumps(a))
    (tmp_path / "b.json").write_text(json.dumps(b))
    out = evaluate.compare_reports(tmp_path / "a.json", tmp_path / "b.json")
    assert "answer_accuracy" in out and "+0.250" in out
    assert "q2: wrong -> right" in out
    assert "q1:" not in out


def test_load_qa_names_the_bad_line(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text('{"id": "q1", "question": "ok?"}\n{"id": "q2"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="qa.jsonl:2: missing 'question'"):
        evaluate.load_qa(path)


def test_bundled_eval_file_is_well_formed():
    from pathlib import Path

    rows = evaluate.load_qa(Path(__file__).resolve().parent.parent / "eval" / "qa.jsonl")
    assert len(rows) >= 80
    assert len({r["id"] for r in rows}) == len(rows)
    tags = [t for r in rows for t in r["tags"]]
    assert tags.count("unanswerable") >= 12
    assert sum(1 for r in rows if {"q-en", "doc-zh", "xling"} <= set(r["tags"])) >= 15
    assert sum(1 for r in rows if {"q-zh", "doc-en", "xling"} <= set(r["tags"])) >= 15
    for r in rows:
        assert bool(r["answers"]) == bool(r["doc_ids"]), r["id"]


def test_quote_metrics_see_a_wrong_quote_beside_a_right_one():
    rows = [
        {**_row("q1"), "quotes_with_gold": [True, False]},  # right, but with a filler quote
        {**_row("q2"), "quotes_with_gold": [False, True]},  # right only by its second quote
        {**_row("q3", correct=False), "quotes_with_gold": [False]},
        {**_row("q4", abstained=True, correct=False), "quotes_with_gold": []},
        {**_row("q5", answerable=False, abstained=True), "quotes_with_gold": []},
    ]
    m = evaluate.metrics(rows)
    assert m["answerable_accuracy"] == pytest.approx(2 / 4)
    assert m["first_quote_accuracy"] == pytest.approx(1 / 4)  # an abstention on an answerable question is a miss
    assert m["quote_precision"] == pytest.approx(2 / 5)


def test_rows_are_sliced_by_language_direction():
    assert evaluate.language_direction(["q-en", "doc-zh", "xquad"]) == "en→zh"
    assert evaluate.language_direction(["q-zh", "doc-zh"]) == "zh→zh"
    assert evaluate.language_direction(["q-en", "unanswerable"]) is None


def test_a_section_of_the_thresholds_and_ceilings():
    report = {"answer_accuracy": 0.7, "abstention": {"false_rate": 0.08}}
    floors = {"answer_accuracy": 0.9, "xquad": {"answer_accuracy": 0.6, "max abstention.false_rate": 0.05}}
    assert evaluate.check_thresholds(report, floors) == ["answer_accuracy: 0.7000 is below the floor 0.9"]
    assert evaluate.check_thresholds(report, floors, "xquad") == [
        "abstention.false_rate: 0.0800 is above the ceiling 0.05"
    ]
    with pytest.raises(ValueError, match="no section 'cmrc'"):
        evaluate.check_thresholds(report, floors, "cmrc")
