"""The Milvus backend (rag.milvus) beside the FAISS store on the same synthetic e5-like vectors.

Run: python bench/milvus.py --n 100000 [--queries 200] [--kinds flat,hnsw] [--uri ./milvus.db]
     python bench/milvus.py --n 1000000 --kinds hnsw --faiss 0

The vectors, queries and exact top-10 are bench/scale.py's (same generator, same --work cache).
For each index kind, both stores are filled through their own `add` (Milvus: inserts of 4,096
rows, then `save`, which flushes and so builds the index), then timed one query at a time at
k=40 (what retrieval asks for), with recall@10 against exact search. With a local --uri this
measures Milvus Lite, which is pure Python over per-segment FAISS indexes: its latency includes a
gRPC round trip inside the process, and it is not what a Milvus server would give; a server URI
(http://host:19530) measures that server instead.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, summarize  # noqa: E402
from scale import DIM, Generator, exact_top, real_embeddings, recall_at, time_searches, vectors_file  # noqa: E402

from rag.milvus import MilvusStore, MilvusUnavailableError  # noqa: E402
from rag.store import VectorStore  # noqa: E402

K = 40


def fill(store, vectors: np.ndarray, batch: int = 100_000) -> None:
    for i in range(0, len(vectors), batch):
        part = np.ascontiguousarray(vectors[i : i + batch])
        store.add(np.arange(i, i + len(part), dtype=np.int64), part)


def bench(name: str, store, vectors, queries, truth, work: Path) -> dict:
    started = time.perf_counter()
    fill(store, vectors)
    store.save(work / ("vectors.milvus.json" if name == "milvus" else "vectors.faiss"))
    build_s = time.perf_counter() - started
    time_searches(store, queries[:10], K)  # warm up: first queries load segments and caches
    times, found = time_searches(store, queries, K)
    recall = round(recall_at(found, truth), 4)
    return {"build_s": round(build_s, 1), "search_ms": summarize(times), "recall_at_10": recall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--kinds", default="flat,hnsw")
    parser.add_argument("--uri", default=None, help="Milvus URI (default: a Milvus Lite folder in --work)")
    parser.add_argument("--faiss", type=int, default=1, help="0: Milvus only (bench/scale.py has FAISS at 1M)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "rag-bench-scale")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    uri = args.uri or str(args.work / "bench-milvus.db")
    if args.uri is None:
        shutil.rmtree(uri, ignore_errors=True)

    real = real_embeddings(args.work)
    gen = Generator(real, n_topics=max(16, args.n // 64))
    vectors = vectors_file(args.work, gen, args.n)
    queries = gen.draw(args.queries, seed=7)
    truth = exact_top(vectors, queries, 10)
    figures: dict = {"n": args.n, "dim": DIM, "k": K, "uri": uri, "load_average_at_start": os.getloadavg()}
    rows = []
    for kind in args.kinds.split(","):
        faiss_figures = (
            bench("faiss", VectorStore(DIM, kind), vectors, queries, truth, args.work) if args.faiss else None
        )
        store = MilvusStore.create(uri, f"bench_{kind}", DIM, kind, args.n)
        milvus_figures = bench("milvus", store, vectors, queries, truth, args.work)
        print(kind, "milvus", json.dumps(milvus_figures), flush=True)  # kept even if the drop below fails
        try:
            store.drop()
        except MilvusUnavailableError as exc:  # Milvus Lite 3.2.2 can fail to drop mid-compaction
            print(f"could not drop {store.collection}: {exc}", file=sys.stderr)
        figures[kind] = {"faiss": faiss_figures, "milvus": milvus_figures}
        for name, f in (("faiss", faiss_figures), ("milvus", milvus_figures)):
            if f is None:
                continue
            rows.append(
                (
                    f"{kind} {name}",
                    f"build {f['build_s']} s, search p50 {f['search_ms']['p50']} ms "
                    f"(p95 {f['search_ms']['p95']}), recall@10 {f['recall_at_10']}",
                )
            )
    figures["load_average_at_end"] = os.getloadavg()
    emit(f"milvus vs faiss, {args.n:,} vectors", figures, rows)


if __name__ == "__main__":
    main()
