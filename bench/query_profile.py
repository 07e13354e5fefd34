"""Where a warm question's time goes: the stages of `Assistant.retrieve` and of the answer, by wall time.

Run: python bench/query_profile.py [--eval bundled|xquad] [--rounds 2]
Builds (or refreshes) the eval's index in a temporary folder, answers every question once to warm
up (the judge's per-sentence caches then hold what the questions read), then times each stage over
--rounds passes, each question's own USE vector forgotten first so that the question itself is new,
by wrapping the functions the assistant calls:
- query embedding (`embed_queries`; it runs on a second thread while BM25 ranks the words, so it
  overlaps the lexical lists and the stages do not add up to the total);
- the four ranked lists and fusion (`rag.retrieval.retrieve`, embedding included);
- the answer judge: sentence features (`candidate_features`), the USE second reading
  (`add_use_features`) and the judge as a whole (`rag.judge.judge`, both included);
- answer composition (`extractive_answer`);
and the totals: retrieve (the 5 passages shown) and the whole extractive answer.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, summarize  # noqa: E402

import rag.answer  # noqa: E402
import rag.assistant  # noqa: E402
import rag.judge  # noqa: E402
import rag.retrieval  # noqa: E402
from rag.assistant import Assistant  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.documents import normalize  # noqa: E402
from rag.evaluate import load_qa  # noqa: E402

EVALS = {
    "bundled": (ROOT / "corpus", [ROOT / "eval" / "qa.jsonl"]),
    "xquad": (ROOT / "eval" / "xquad" / "corpus", [ROOT / "eval" / "xquad" / "questions.jsonl"]),
}


def timed(stages: dict[str, list[float]], name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            stages[name].append((time.perf_counter() - started) * 1000)

    return wrapper


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", choices=sorted(EVALS), default="bundled")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    corpus, qa_paths = EVALS[args.eval]
    questions = [row["question"] for path in qa_paths for row in load_qa(path)]
    work = Path(tempfile.mkdtemp(prefix="query-profile-"))
    settings = Settings.from_env(corpus_dir=corpus, index_dir=work / "index")
    assistant = Assistant(settings)
    assistant.ensure_index()
    for question in questions:
        assistant.ask(question)

    stages: dict[str, list[float]] = defaultdict(list)
    embedder = assistant.embedder
    embedder.embed_queries = timed(stages, "query embedding", embedder.embed_queries)
    # Patched where they are looked up: the modules that call them imported them by name.
    rag.assistant.retrieve = timed(stages, "ranked lists + fusion (embedding included)", rag.retrieval.retrieve)
    rag.judge.candidate_features = timed(stages, "judge: sentence features", rag.judge.candidate_features)
    rag.judge.add_use_features = timed(stages, "judge: USE second reading", rag.judge.add_use_features)
    rag.assistant.judge = timed(stages, "judge: whole", rag.judge.judge)
    rag.assistant.extractive_answer = timed(stages, "answer composition", rag.answer.extractive_answer)

    def forget_question(question: str) -> None:
        if assistant.judge is not None:
            assistant.judge.forget([question, normalize(question)])

    for _ in range(args.rounds):
        for question in questions:
            forget_question(question)
            started = time.perf_counter()
            assistant.retrieve(question)
            stages["total: retrieve (passages shown)"].append((time.perf_counter() - started) * 1000)
    retrieve_only = {name: list(values) for name, values in stages.items()}
    stages.clear()
    for _ in range(args.rounds):
        for question in questions:
            forget_question(question)
            started = time.perf_counter()
            assistant.ask(question)
            stages["total: extractive answer"].append((time.perf_counter() - started) * 1000)
    retrieve_only["total: extractive answer"] = stages["total: extractive answer"]
    retrieve_only["answer composition"] = stages["answer composition"]

    figures = {name: summarize(values) for name, values in retrieve_only.items()}
    figures["load_avg"] = round(os.getloadavg()[0], 2)
    figures["questions"] = len(questions)
    rows = [
        (name, f"p50 {f['p50']:.1f} ms  p95 {f['p95']:.1f} ms  mean {f['mean']:.1f} ms  (n={f['n']})")
        for name, f in figures.items()
        if isinstance(f, dict)
    ]
    rows.append(("load average at the end", str(figures["load_avg"])))
    emit(f"query-profile-{args.eval}", figures, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
