"""Query latency on the bundled corpus, warm, and cold start of `rag ask` and of the web chat.

Run: python bench/latency.py [--queries 200] [--cold-runs 5]
     python bench/latency.py --cold-only --cold-runs 5      # only the two cold starts
Prints p50/p95 (ms) of query embedding, the whole retrieval, the extractive answer and the total,
over the eval questions cycled to --queries, after one warm-up pass; then, over --cold-runs runs
each, the wall time of a fresh `rag ask` process run as from a shell (cold start: interpreter,
imports, model and index loads, answer), and the time from launching `python app.py` to its
page being served on a free loopback port. The index must exist (the first run builds it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, free_port, summarize, wait_until_up  # noqa: E402

from rag.assistant import Assistant  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.evaluate import load_qa  # noqa: E402

COLD_QUESTION = "第二届长三角一体化发展高层论坛集中展示了多少项重大科技成果?"


def cold_app_start_s(timeout_s: float = 300.0) -> float:
    """Seconds from launching `python app.py` to a 200 on its page (index already built)."""
    port = free_port()
    started = time.perf_counter()
    app = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py"), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until_up(f"http://127.0.0.1:{port}/", app, timeout_s, poll_s=0.1)
        return time.perf_counter() - started
    finally:
        app.terminate()
        app.wait(timeout=30)


def cold_ask_s() -> float:
    """Seconds for one fresh `rag ask --json` process to answer (index already built)."""
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "rag.cli", "ask", "--json", COLD_QUESTION],
        check=True,
        cwd=ROOT,
        capture_output=True,
        env=dict(os.environ),
    )
    return time.perf_counter() - started


def cold_starts(runs: int) -> tuple[list[float], list[float]]:
    """`runs` cold `rag ask` and `python app.py` times, interleaved so a busy spell hits both."""
    asks, pages = [], []
    for _ in range(runs):
        asks.append(cold_ask_s())
        pages.append(cold_app_start_s())
    return asks, pages


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--cold-judge",
        action="store_true",
        help="clear the sentence judge's cache before each question, as for sentences never seen before "
        "(by default the cycled questions meet the same sentences again)",
    )
    parser.add_argument("--cold-runs", type=int, default=5, help="cold starts of each kind (p50 reported)")
    parser.add_argument("--cold-only", action="store_true", help="skip the warm queries")
    args = parser.parse_args()
    if args.cold_only:
        Assistant(Settings.from_env()).ensure_index()
        asks, pages = cold_starts(args.cold_runs)
        figures = _cold_figures(asks, pages)
        emit("cold start, bundled corpus, index built", figures, _cold_rows(figures))
        return
    assistant = Assistant(Settings.from_env())
    assistant.ensure_index()
    questions = [r["question"] for r in load_qa(ROOT / "eval" / "qa.jsonl")]
    questions = (questions * (args.queries // len(questions) + 1))[: args.queries]
    for q in questions[:20]:  # warm-up: caches, allocator, jieba dictionary
        assistant.ask(q)

    embed, retrieve, answer, total = [], [], [], []
    for q in questions:
        if args.cold_judge and assistant.judge is not None:
            assistant.judge.clear_cache()
        started = time.perf_counter()
        assistant.embedder.embed_queries([q])
        embed.append((time.perf_counter() - started) * 1000)
        result = assistant.ask(q)
        retrieve.append(result.timings_ms["retrieve"])
        answer.append(result.timings_ms["answer"])
        total.append(result.timings_ms["total"])

    asks, pages = cold_starts(args.cold_runs)

    figures = {
        "queries": len(questions),
        "query_embedding_ms": summarize(embed),
        "retrieve_ms_including_embedding": summarize(retrieve),
        "answer_ms": summarize(answer),
        "total_ms": summarize(total),
        **_cold_figures(asks, pages),
        "threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "rerank_sentences": assistant.settings.rerank_sentences,
        "cold_judge": args.cold_judge,
    }
    rows = [
        (name, f"p50 {s['p50']:.1f}  p95 {s['p95']:.1f}")
        for name, s in (
            ("query embedding (ms)", figures["query_embedding_ms"]),
            ("retrieve incl. embedding (ms)", figures["retrieve_ms_including_embedding"]),
            ("extractive answer (ms)", figures["answer_ms"]),
            ("total (ms)", figures["total_ms"]),
        )
    ]
    rows += _cold_rows(figures)
    emit("query latency, bundled corpus, warm", figures, rows)


def _cold_figures(asks: list[float], pages: list[float]) -> dict:
    return {
        "cold_rag_ask_s": summarize(asks),
        "cold_app_page_s": summarize(pages),
        "cold_runs_s": {"rag_ask": [round(x, 2) for x in asks], "app_page": [round(x, 2) for x in pages]},
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def _cold_rows(figures: dict) -> list[tuple[str, str]]:
    names = {"cold_rag_ask_s": "cold `rag ask` (s)", "cold_app_page_s": "cold `python app.py` to page (s)"}
    return [
        (name, f"p50 {figures[key]['p50']:.2f}  p95 {figures[key]['p95']:.2f}  (n={figures[key]['n']})")
        for key, name in names.items()
    ]


if __name__ == "__main__":
    main()
