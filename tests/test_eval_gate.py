"""The CI gate: the eval suite, run with the embedded defaults, must stay above its floors."""

import json
from pathlib import Path

import pytest

from rag import evaluate
from rag.assistant import Assistant
from rag.config import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_eval_stays_above_its_floors(tmp_path, model_cache_dir):
    settings = Settings.from_env(corpus_dir=ROOT / "corpus", index_dir=tmp_path / "index", cache_dir=model_cache_dir)
    assistant = Assistant(settings)
    assistant.ensure_index()
    report = evaluate.run_eval(assistant, ROOT / "eval" / "qa.jsonl")
    evaluate.write_report(report, tmp_path / "report")
    assert {p.name for p in (tmp_path / "report").iterdir()} == {"report.json", "report.md", "report.png"}

    floors = json.loads((ROOT / "eval" / "thresholds.json").read_text(encoding="utf-8"))
    failures = evaluate.check_thresholds(report, floors)
    print(evaluate.summary_table(report))
    assert not failures, "\n".join(failures)
