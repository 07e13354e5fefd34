"""Vector search at scale: exact flat search vs HNSW vs IVF-PQ with re-ranking, on synthetic vectors.

Run: python bench/scale.py [--n 1000000] [--queries 200] [--kinds flat,hnsw,ivfpq]
Vectors are 384-d, L2-normalised, drawn around 4,096 random centres (real embeddings cluster;
uniform random vectors would make every approximate index look worse than it is). Queries are
perturbed corpus vectors. Prints build time, index size in RAM (serialised bytes), p50/p95 search
latency for k=10 on one thread per query, and recall@10 against exact search.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, summarize  # noqa: E402

DIM = 384


def synthetic(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((4096, DIM), dtype=np.float32)
    out = np.empty((n, DIM), dtype=np.float32)
    step = 200_000
    for i in range(0, n, step):
        m = min(step, n - i)
        part = centres[rng.integers(0, len(centres), m)] + 0.6 * rng.standard_normal((m, DIM), dtype=np.float32)
        out[i : i + m] = part / np.linalg.norm(part, axis=1, keepdims=True)
    return out


def build(kind: str, vectors: np.ndarray) -> faiss.Index:
    n = len(vectors)
    if kind == "flat":
        index = faiss.IndexFlatIP(DIM)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 64
    elif kind == "ivfpq":
        nlist = int(4 * np.sqrt(n))
        coarse = faiss.IndexFlatIP(DIM)
        ivf = faiss.IndexIVFPQ(coarse, DIM, nlist, 48, 8, faiss.METRIC_INNER_PRODUCT)
        ivf.train(vectors[np.random.default_rng(1).choice(n, min(n, 100 * nlist), replace=False)])
        # Re-rank the PQ candidates on the full vectors: PQ alone loses recall at top-10.
        index = faiss.IndexRefineFlat(ivf)
        index.k_factor = 8
    else:
        raise ValueError(kind)
    index.add(vectors)
    return index


def set_search_params(kind: str, index: faiss.Index) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = 128
    elif kind == "ivfpq":
        faiss.extract_index_ivf(index.base_index).nprobe = 32


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--kinds", default="flat,hnsw,ivfpq")
    args = parser.parse_args()
    vectors = synthetic(args.n)
    rng = np.random.default_rng(2)
    queries = vectors[rng.choice(args.n, args.queries, replace=False)] + 0.05 * rng.standard_normal(
        (args.queries, DIM), dtype=np.float32
    )
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    exact = faiss.IndexFlatIP(DIM)
    exact.add(vectors)
    _, truth = exact.search(queries, 10)
    del exact

    figures: dict = {"n": args.n, "dim": DIM, "queries": args.queries}
    rows = []
    for kind in args.kinds.split(","):
        started = time.perf_counter()
        index = build(kind, vectors)
        build_s = time.perf_counter() - started
        set_search_params(kind, index)
        size_mb = faiss.serialize_index(index).nbytes / 2**20 if args.n <= 2_000_000 else float("nan")
        faiss.omp_set_num_threads(1)
        times, found = [], []
        for q in queries:
            t = time.perf_counter()
            _, ids = index.search(q[None, :], 10)
            times.append((time.perf_counter() - t) * 1000)
            found.append(ids[0])
        faiss.omp_set_num_threads(0)
        recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
        lat = summarize(times)
        figures[kind] = {
            "build_s": round(build_s, 1),
            "size_mb": round(size_mb, 1),
            "latency_ms": lat,
            "recall@10": round(recall, 4),
        }
        rows.append(
            (
                kind,
                f"build {build_s:.1f} s, {size_mb:.0f} MB, p50 {lat['p50']:.2f} ms, "
                f"p95 {lat['p95']:.2f} ms, recall@10 {recall:.3f}",
            )
        )
        del index
    emit(f"vector search at {args.n:,} vectors", figures, rows)


if __name__ == "__main__":
    main()
