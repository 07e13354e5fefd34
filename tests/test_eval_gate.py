"""The CI gates: both evals, run with the embedded defaults, must stay above their floors."""

import json
from pathlib import Path

import pytest

from rag import evaluate
from rag.assistant import Assistant
from rag.config import Settings

ROOT = Path(__file__).resolve().parent.parent
FLOORS = json.loads((ROOT / "eval" / "thresholds.json").read_text(encoding="utf-8"))


def _run(tmp_path: Path, model_cache_dir, corpus: Path, qa: list[Path]) -> dict:
    settings = Settings.from_env(corpus_dir=corpus, index_dir=tmp_path / "index", cache_dir=model_cache_dir)
    assistant = Assistant(settings)
    assistant.ensure_index()
    report = evaluate.run_eval(assistant, qa)
    print(evaluate.summary_table(report))
    return report


@pytest.mark.slow
def test_the_bundled_eval_stays_above_its_floors(tmp_path, model_cache_dir):
    report = _run(tmp_path, model_cache_dir, ROOT / "corpus", [ROOT / "eval" / "qa.jsonl"])
    evaluate.write_report(report, tmp_path / "report")
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"report.json", "report.md", "report.png"}
    failures = evaluate.check_thresholds(report, FLOORS)
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_the_xquad_eval_stays_above_its_floors(tmp_path, model_cache_dir):
    xquad = ROOT / "eval" / "xquad"
    report = _run(
        tmp_path, model_cache_dir, xquad / "corpus", [xquad / "questions.jsonl", xquad / "unanswerable.jsonl"]
    )
    failures = evaluate.check_thresholds(report, FLOORS, "xquad")
    assert not failures, "\n".join(failures)
