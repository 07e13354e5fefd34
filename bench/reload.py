"""What a server pays to swap in a new generation: `load_index` of an index of N synthetic chunks.

Run: python bench/reload.py --docs 20000 [--work /tmp/rag-reload] [--repeat 3]
     python bench/reload.py --index-dir index           # an existing index (the bundled one), real model not needed

The index is built once into --work from synthetic documents (bench/refresh.py's, 4 sentences of
the bundled corpus each) with random 384-d vectors (the load does not depend on their values),
then loaded --repeat times as a replica does when CURRENT moves (rag.live_index). Reported: the
whole load, and the part of it spent in sha256 over the generation's files (rag.indexing._checksum),
which item 1 of issue 18 ("verify lazily or from a stored digest") would remove, and the other
steps: reading chunks.jsonl, the FAISS files, mapping BM25, building the Index's lookup tables.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, summarize  # noqa: E402
from refresh import make_corpus  # noqa: E402

import rag.indexing  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.indexing import current_generation, load_index, refresh_index  # noqa: E402


class RandomEmbedder:
    """384-d unit vectors from a hash of the text: the shape of multilingual-e5-small's, at no cost."""

    name, dim = "random-384", 384

    def embed_passages(self, texts):
        rows = [np.random.default_rng(abs(hash(t)) % 2**32).standard_normal(self.dim) for t in texts]
        vectors = np.asarray(rows, dtype=np.float32).reshape(len(texts), self.dim)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-9)

    embed_queries = embed_passages

    def count_tokens(self, texts):
        return [len(t.split()) + sum(1 for ch in t if ord(ch) > 0x2E80) for t in texts]


# The steps of load_index, timed by wrapping the functions it calls (they do not nest).
STAGES = [
    (rag.indexing, "_checksum", "sha256 of the files"),
    (rag.indexing, "_read_chunks", "chunks.jsonl (text, terms)"),
    (rag.indexing, "load_store", "vector stores (FAISS read)"),
    (rag.indexing.BM25, "load", "BM25 map"),
    (rag.indexing.Index, "__post_init__", "Index lookup tables"),
]


def timed_loads(index_dir: Path, repeat: int) -> dict:
    seconds: dict[str, float] = {}
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in STAGES]

    def timed(function, stage):
        def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[stage] = seconds.get(stage, 0.0) + time.perf_counter() - started

        return run

    for (owner, name, stage), (_, _, function) in zip(STAGES, originals):
        wrapped = timed(function, stage)
        setattr(owner, name, staticmethod(wrapped) if name == "load" else wrapped)
    loads, stages = [], []
    try:
        for _ in range(repeat):
            index = None
            gc.collect()
            seconds.clear()
            started = time.perf_counter()
            index = load_index(index_dir)
            loads.append(time.perf_counter() - started)
            stages.append({k: round(v, 3) for k, v in seconds.items()})
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)
    gen = current_generation(index_dir)
    size = sum(p.stat().st_size for p in gen.iterdir() if p.is_file())
    return {
        "chunks": len(index.chunks),
        "sentences": len(index.sentence_vectors),
        "generation_mb": round(size / 2**20, 1),
        "load_s": [round(x, 3) for x in loads],
        "stages_s": stages,
    }


QUESTIONS = [
    "How many major scientific and technological achievements were shown at the forum?",
    "第二届长三角一体化发展高层论坛集中展示了多少项重大科技成果?",
    "Who is the chairman of the board of Huali Group?",
    "The Yuandang Lake water system lies in which two districts?",
]


def latency_during_a_load(index_dir: Path, seconds: float) -> dict:
    """Question latency (ms) with nothing else running, then while the same generation loads in a thread,
    as it does when a server swaps in a new one (the load holds the GIL most of the time)."""
    import threading

    from rag.assistant import Assistant

    settings = Settings(index_dir=index_dir, rerank_sentences=0, reload_check_s=float("inf"))
    assistant = Assistant(settings, RandomEmbedder())
    assistant.warm_up()

    def ask_until(stop) -> list[float]:
        times = []
        for n in range(10**6):
            if stop():
                break
            started = time.perf_counter()
            assistant.ask(QUESTIONS[n % len(QUESTIONS)])
            times.append((time.perf_counter() - started) * 1000)
        return times

    deadline = time.monotonic() + seconds
    idle = ask_until(lambda: time.monotonic() > deadline)
    loader = threading.Thread(target=lambda: load_index(index_dir))
    loader.start()
    during = ask_until(lambda: not loader.is_alive())
    loader.join()
    return {"idle_ms": summarize(idle), "during_load_ms": summarize(during)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rag-reload"))
    parser.add_argument("--index-dir", type=Path, help="time this existing index instead of building one")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--latency", type=float, default=0, metavar="S", help="also time questions for S s idle, then during a load"
    )
    args = parser.parse_args()
    index_dir = args.index_dir
    build_s = None
    if index_dir is None:
        corpus, index_dir = args.work / f"corpus-{args.docs}", args.work / f"index-{args.docs}"
        if current_generation(index_dir) is None:
            corpus.mkdir(parents=True, exist_ok=True)
            make_corpus(corpus, args.docs)
            started = time.perf_counter()
            settings = Settings(corpus_dir=corpus, index_dir=index_dir, generation_grace_s=0)
            refresh_index(settings, RandomEmbedder())
            build_s = round(time.perf_counter() - started, 1)
    figures = {"index_dir": str(index_dir), "build_s": build_s, **timed_loads(index_dir, args.repeat)}
    rows = [
        ("chunks / sentences", f"{figures['chunks']} / {figures['sentences']}"),
        ("generation on disk", f"{figures['generation_mb']} MB"),
        ("load_index (s)", ", ".join(f"{x:.3f}" for x in figures["load_s"])),
    ] + [
        (f"  {stage} (s)", ", ".join(f"{run.get(stage, 0.0):.3f}" for run in figures["stages_s"]))
        for _, _, stage in STAGES
    ]
    if args.latency:
        figures |= latency_during_a_load(index_dir, args.latency)
        for key in ("idle_ms", "during_load_ms"):
            rows.append((f"question {key[:-3]} p50 / p95 (ms)", f"{figures[key]['p50']} / {figures[key]['p95']}"))
    emit("reload", figures, rows)


if __name__ == "__main__":
    main()
