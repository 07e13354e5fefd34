"""Retrieval at scale on synthetic chunks: vector index types, lexical BM25, and hybrid retrieve.

Run: python bench/scale.py --n 1000000 [--queries 200] [--kinds flat,hnsw,ivfpq] [--lexical rag,bm25s]
     python bench/scale.py --n 5000000 --kinds ivfpq,flat --lexical none --hybrid 0

Vectors (384-d, L2-normalised) imitate multilingual-e5-small's: the bundled corpus's sentences
are embedded with the real model, and a Gaussian with their mean and covariance (plus a small
isotropic floor) draws n/64 topic centres; each chunk is a centre plus a smaller draw from the
same covariance. So vectors share e5's common direction and spectrum and come in topics of ~64
near neighbours. Queries are fresh draws from the same topics, never corpus vectors. The vectors
are written once to a file in --work (reused by later runs) and read through a memory map.

Every index is built through rag.store.VectorStore, so the figures are the store's. Per type:
build time, size on disk, RAM (growth of the process's anonymous memory), and p50/p95 latency of
one query on one thread with recall@10 against exact search, for a sweep of search parameters.

Lexical: synthetic chunks of ~60 terms drawn from a Zipf law over 200k terms; queries are 4 terms
of a random chunk. rag.lexical.BM25 is built (what writing an index generation pays), saved, then
checksummed and memory-mapped as the index loader does (what every load pays), and queried from
the map; bm25s (also saved and memory-mapped) is the comparison. Hybrid: one query
embedding with the real model, the chunk-vector search (k=40, the store's default parameters),
BM25 top-40 and reciprocal-rank fusion, timed together.
"""

from __future__ import annotations

import argparse
import gc
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, percentile, summarize  # noqa: E402

from rag import store as store_module  # noqa: E402
from rag.store import VectorStore, choose_index_type  # noqa: E402

DIM = 384
BATCH = 100_000
SWEEPS = {
    "flat": [{}],
    "hnsw": [{"ef_search": ef} for ef in (64, 128, 256, 512)],
    "ivfpq": [{"nprobe": p, "k_factor": f} for p in (16, 32, 64, 128, 256) for f in (8, 16, 32)],
}


def rss_anon_mb() -> float:
    """Anonymous resident memory: what the indexes hold (the memory-mapped vectors are file pages)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# --------------------------------------------------------------------------- synthetic vectors


def real_embeddings(cache_dir: Path) -> np.ndarray:
    """multilingual-e5-small vectors of the bundled corpus's sentences (the model's own geometry)."""
    from rag.chunking import split_sentences
    from rag.config import Settings
    from rag.documents import load_corpus
    from rag.embeddings import load_embedder

    cached = cache_dir / "real-e5-sentences.npy"
    if cached.exists():
        return np.load(cached)
    docs, _ = load_corpus(ROOT / "corpus")
    texts = [d.text[s.start : s.end] for d in docs for s in split_sentences(d.text) if s.end - s.start > 10]
    settings = Settings.from_env()
    vectors = load_embedder(settings.embed_model, settings.cache_dir).embed_passages(texts)
    np.save(cached, vectors)
    return vectors


class Generator:
    """Draws e5-like vectors: topic centres from the real vectors' Gaussian, chunks around them."""

    def __init__(self, real: np.ndarray, n_topics: int, spread: float = 0.6, floor: float = 0.01) -> None:
        self.mean = real.mean(axis=0)
        # Samples of N(0, cov) are deviations @ z / sqrt(m): no need to form the covariance.
        self.deviations = (real - self.mean).astype(np.float32) / np.sqrt(len(real))
        self.spread, self.floor = spread, floor
        rng = np.random.default_rng(12345)
        # Centre and chunk draws split the real variance (spread^2 of it within a topic), so the
        # cosine of two unrelated chunks stays that of two unrelated real sentences.
        self.centres = self.mean + np.sqrt(1 - spread**2) * self._gaussian(rng, n_topics)

    def _gaussian(self, rng: np.random.Generator, n: int) -> np.ndarray:
        z = rng.standard_normal((n, len(self.deviations)), dtype=np.float32)
        return z @ self.deviations + self.floor * rng.standard_normal((n, DIM), dtype=np.float32)

    def draw(self, n: int, seed: int) -> np.ndarray:
        rng = np.random.default_rng(seed)
        x = self.centres[rng.integers(0, len(self.centres), n)] + self.spread * self._gaussian(rng, n)
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def vectors_file(work: Path, gen: Generator, n: int) -> np.ndarray:
    path = work / f"vectors-{n}-spread{gen.spread}.f32"
    if not path.exists() or path.stat().st_size != n * DIM * 4:
        out = np.memmap(path, np.float32, "w+", shape=(n, DIM))
        for i in range(0, n, BATCH):
            out[i : i + BATCH] = gen.draw(min(BATCH, n - i), seed=1000 + i // BATCH)
        out.flush()
        del out
    return np.memmap(path, np.float32, "r", shape=(n, DIM))


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k ids by inner product, computed batch by batch over the memory map."""
    best_d = np.full((len(queries), 0), -np.inf, np.float32)
    best_i = np.zeros((len(queries), 0), np.int64)
    for i in range(0, len(vectors), BATCH):
        d, j = faiss.knn(queries, np.ascontiguousarray(vectors[i : i + BATCH]), k, faiss.METRIC_INNER_PRODUCT)
        d, j = np.hstack([best_d, d]), np.hstack([best_i, j + i])
        order = np.argsort(-d, axis=1)[:, :k]
        best_d, best_i = np.take_along_axis(d, order, 1), np.take_along_axis(j, order, 1)
    return best_i


def stats(real: np.ndarray, synthetic: np.ndarray, queries: np.ndarray, truth_top1: np.ndarray) -> dict:
    rng = np.random.default_rng(3)

    def pair_cos(x: np.ndarray) -> float:
        a, b = rng.integers(0, len(x), 2000), rng.integers(0, len(x), 2000)
        keep = a != b
        return float(np.mean(np.sum(x[a[keep]] * x[b[keep]], axis=1)))

    sims = real @ real.T
    np.fill_diagonal(sims, -1)
    return {
        "real_e5_sentences": len(real),
        "real_mean_pair_cosine": round(pair_cos(real), 3),
        "real_mean_nearest_neighbour_cosine": round(float(sims.max(axis=1).mean()), 3),
        "synthetic_mean_pair_cosine": round(pair_cos(synthetic), 3),
        "synthetic_mean_query_top1_cosine": round(float(np.mean(np.sum(queries * truth_top1, axis=1))), 3),
    }


# --------------------------------------------------------------------------- vector index types


def time_searches(store: VectorStore, queries: np.ndarray, k: int) -> tuple[list[float], np.ndarray]:
    times, found = [], np.zeros((len(queries), k), np.int64)
    for row, q in enumerate(queries):
        started = time.perf_counter()
        _, ids = store.search(q[None, :], k)
        times.append((time.perf_counter() - started) * 1000)
        found[row, : ids.shape[1]] = ids[0]
    return times, found


def recall_at(found: np.ndarray, truth: np.ndarray, k: int = 10) -> float:
    return float(np.mean([len(set(f[:k].tolist()) & set(t[:k].tolist())) / k for f, t in zip(found, truth)]))


def bench_kind(kind: str, vectors: np.ndarray, queries: np.ndarray, truth: np.ndarray, work: Path) -> dict:
    gc.collect()
    ram_before = rss_anon_mb()
    started = time.perf_counter()
    store = VectorStore(DIM, kind)
    store.add(np.arange(len(vectors), dtype=np.int64), vectors)
    build_s = time.perf_counter() - started
    gc.collect()
    ram_mb = rss_anon_mb() - ram_before
    path = work / f"store-{kind}.faiss"
    store.save(path)
    disk_mb = path.stat().st_size / 2**20
    path.unlink()

    faiss.omp_set_num_threads(1)  # one query on one core, as a server thread would run it
    # Exact search costs ~100 ms per query at 1M: fewer queries give the same percentiles.
    timed = queries if kind != "flat" or len(vectors) <= 1_000_000 else queries[:50]
    sweep = []
    for params in SWEEPS[kind]:
        store.set_search_params(**params)
        times, found = time_searches(store, timed, 10)
        sweep.append({**params, "latency_ms": summarize(times), "recall@10": round(recall_at(found, truth), 4)})
        print(f"  {kind} {params}: p50 {percentile(times, 0.5):.2f} ms, recall@10 {sweep[-1]['recall@10']}", flush=True)
    store.set_search_params()  # back to the store's defaults
    times, found = time_searches(store, timed, 40)
    default = {"latency_ms_k40": summarize(times), "recall@10": round(recall_at(found, truth), 4)}
    faiss.omp_set_num_threads(0)
    ok = [s for s in sweep if s["recall@10"] >= 0.95]
    best = min(ok, key=lambda s: s["latency_ms"]["p50"]) if ok else None
    return {
        "build_s": round(build_s, 1),
        "disk_mb": round(disk_mb, 1),
        "ram_mb": round(ram_mb, 1),
        "sweep": sweep,
        "fastest_with_recall_0.95": best,
        "store_defaults": default,
        "_store": store,
    }


# --------------------------------------------------------------------------- lexical


def synthetic_terms(n: int, vocabulary: int = 200_000, mean_len: int = 60, seed: int = 5) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.poisson(mean_len, n), 5, None)
    ranks = np.arange(1, vocabulary + 1, dtype=np.float64)
    p = ranks**-1.07
    p /= p.sum()
    flat = rng.choice(vocabulary, int(lengths.sum()), p=p).astype(np.int32)
    return np.split(flat, np.cumsum(lengths)[:-1])


def lexical_queries(docs: list[np.ndarray], n: int, seed: int = 6) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.choice(docs[i], 4, replace=False).tolist() for i in rng.integers(0, len(docs), n)]


def bench_rag_bm25(docs: list[np.ndarray], queries: list[list[int]], work: Path) -> tuple[dict, object]:
    """Build (paid when the index is written), save, verify and memory-map (paid at every load)."""
    from rag.indexing import _checksum
    from rag.lexical import BM25

    words = [f"w{i}" for i in range(200_000)]
    terms = [[words[t] for t in doc] for doc in docs]  # what chunks.jsonl stores
    gc.collect()
    started = time.perf_counter()
    built = BM25(terms)
    build_s = time.perf_counter() - started
    del terms
    paths = [work / name for name in BM25.FILES]
    started = time.perf_counter()
    built.save(*paths)
    save_s = time.perf_counter() - started
    disk_mb = sum(p.stat().st_size for p in paths) / 2**20
    query_terms = [[words[t] for t in q] for q in queries]
    built_top = [built.top(q, 40) for q in query_terms[:20]]
    del built
    gc.collect()
    # What rag.indexing's loader does: sha256 of each file, then BM25.load. The files were just
    # written, so they are read from the page cache (a warm load, as after a refresh).
    ram_before = rss_anon_mb()
    started = time.perf_counter()
    for path in paths:
        _checksum(path)
    checksum_s = time.perf_counter() - started
    started = time.perf_counter()
    bm25 = BM25.load(*paths)
    load_s = time.perf_counter() - started
    same = all(np.array_equal(a, b) for q, want in zip(query_terms, built_top) for a, b in zip(bm25.top(q, 40), want))
    times = []
    for q in query_terms:  # BM25.top selects the top 40 with argpartition before sorting them
        started = time.perf_counter()
        bm25.top(q, 40)
        times.append((time.perf_counter() - started) * 1000)
    ram_mb = rss_anon_mb() - ram_before
    return {
        "build_s": round(build_s, 1),
        "save_s": round(save_s, 2),
        "disk_mb": round(disk_mb, 1),
        "load_checksum_s": round(checksum_s, 2),
        "load_mmap_s": round(load_s, 2),
        "loaded_top40_equals_built": same,
        "ram_anon_after_load_and_queries_mb": round(ram_mb, 1),
        "latency_ms_top40": summarize(times),
    }, (bm25, query_terms)


def bench_bm25s(docs: list[np.ndarray], queries: list[list[int]], work: Path) -> dict:
    try:
        import bm25s
    except ImportError:
        return {"skipped": "bm25s is not installed: pip install bm25s"}
    vocab = {f"w{i}": i for i in range(200_000)}
    tokenized = bm25s.tokenization.Tokenized(ids=[d.tolist() for d in docs], vocab=vocab)
    started = time.perf_counter()
    retriever = bm25s.BM25(k1=1.2, b=0.75, method="robertson")
    retriever.index(tokenized, show_progress=False)
    build_s = time.perf_counter() - started
    folder = work / "bm25s"
    shutil.rmtree(folder, ignore_errors=True)
    # Saved once; what a reader pays is a memory-mapped load.
    retriever.save(folder)
    del tokenized, retriever
    gc.collect()
    disk_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 2**20
    ram_before = rss_anon_mb()
    started = time.perf_counter()
    retriever = bm25s.BM25.load(folder, mmap=True)
    load_s = time.perf_counter() - started
    times, score_times = [], []
    for q in ([f"w{t}" for t in q] for q in queries):  # strings: bm25s re-numbers its vocabulary
        started = time.perf_counter()
        retriever.retrieve([q], k=40, show_progress=False, n_threads=1)
        times.append((time.perf_counter() - started) * 1000)
        # The same sparse column sum without retrieve()'s per-call machinery.
        started = time.perf_counter()
        scores = retriever.get_scores(q)
        top = np.argpartition(-scores, 40)[:40]
        top[np.argsort(-scores[top])]
        score_times.append((time.perf_counter() - started) * 1000)
    ram_mb = rss_anon_mb() - ram_before
    shutil.rmtree(folder, ignore_errors=True)
    return {
        "build_s": round(build_s, 1),
        "disk_mb": round(disk_mb, 1),
        "load_mmap_s": round(load_s, 2),
        "ram_after_queries_mb": round(ram_mb, 1),
        "latency_ms_top40_retrieve": summarize(times),
        "latency_ms_top40_get_scores": summarize(score_times),
    }


# --------------------------------------------------------------------------- hybrid


def bench_hybrid(store: VectorStore, bm25, query_terms: list[list[str]], queries: np.ndarray) -> dict:
    from rag.config import Settings
    from rag.embeddings import load_embedder
    from rag.evaluate import load_qa
    from rag.retrieval import reciprocal_rank_fusion

    settings = Settings.from_env()
    embedder = load_embedder(settings.embed_model, settings.cache_dir)
    questions = [r["question"] for r in load_qa(ROOT / "eval" / "qa.jsonl")]
    for q in questions[:10]:
        embedder.embed_queries([q])
    faiss.omp_set_num_threads(1)
    parts: dict[str, list[float]] = {"query_embedding": [], "vector_search": [], "bm25": [], "fusion": [], "total": []}
    for i, vector in enumerate(queries):
        t0 = time.perf_counter()
        # The real query embedding is computed and timed; the synthetic vector stands in for it.
        embedder.embed_queries([questions[i % len(questions)]])
        t1 = time.perf_counter()
        _, ids = store.search(vector[None, :], 40)
        t2 = time.perf_counter()
        rows, _ = bm25.top(query_terms[i], 40)
        t3 = time.perf_counter()
        reciprocal_rank_fusion([ids[0].tolist(), rows.tolist()], [1.0, 1.0])
        t4 = time.perf_counter()
        for name, (a, b) in zip(parts, [(t0, t1), (t1, t2), (t2, t3), (t3, t4), (t0, t4)]):
            parts[name].append((b - a) * 1000)
    faiss.omp_set_num_threads(0)
    # Note: faiss and torch share the OpenMP runtime here, so the embedding ran on one thread too.
    return {"index_type": store.kind, **{f"{k}_ms": summarize(v) for k, v in parts.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--kinds", default="flat,hnsw,ivfpq")
    parser.add_argument("--lexical", default="rag,bm25s", help="rag,bm25s or none")
    parser.add_argument("--hybrid", type=int, default=1, help="1: time hybrid retrieve with the auto index")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "rag-bench-scale")
    parser.add_argument("--spread", type=float, default=0.6, help="share of the variance within a topic (sqrt)")
    parser.add_argument("--keep", action="store_true", help="keep the vector file in --work for later runs")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    real = real_embeddings(args.work)
    gen = Generator(real, n_topics=max(16, args.n // 64), spread=args.spread)
    started = time.perf_counter()
    vectors = vectors_file(args.work, gen, args.n)
    queries = gen.draw(args.queries, seed=7)
    truth = exact_top(vectors, queries, 10)
    data_s = time.perf_counter() - started
    figures: dict = {
        "n": args.n,
        "spread": args.spread,
        "dim": DIM,
        "queries": args.queries,
        "cpus": os.cpu_count(),
        "load_average_at_start": os.getloadavg(),
        "data": stats(real, np.asarray(vectors[:20000]), queries, np.asarray(vectors[truth[:, 0]])),
        "data_and_exact_truth_s": round(data_s, 1),
        "auto_policy": {"flat_max_vectors": store_module.FLAT_MAX_VECTORS, "chooses": choose_index_type(args.n)},
    }
    print(figures["data"], flush=True)
    rows = []
    auto_store = None
    for kind in [k for k in args.kinds.split(",") if k]:
        result = bench_kind(kind, vectors, queries, truth, args.work)
        store = result.pop("_store")
        if kind == choose_index_type(args.n) and args.hybrid:
            auto_store = store
        del store
        figures[kind] = result
        best = result["fastest_with_recall_0.95"]
        best_text = (
            f"fastest >= 0.95: { ({k: v for k, v in best.items() if k not in ('latency_ms', 'recall@10')}) } "
            f"p50 {best['latency_ms']['p50']:.2f} ms, recall {best['recall@10']}"
            if best
            else f"no setting reached 0.95 (best {max(s['recall@10'] for s in result['sweep'])})"
        )
        rows.append(
            (
                kind,
                f"build {result['build_s']:.0f} s, disk {result['disk_mb']:.0f} MB, RAM {result['ram_mb']:.0f} MB; "
                + best_text,
            )
        )
        print(rows[-1], flush=True)
        gc.collect()

    lexical = [x for x in args.lexical.split(",") if x and x != "none"]
    bm25 = query_terms = None
    if lexical:
        docs = synthetic_terms(args.n)
        lex_queries = lexical_queries(docs, args.queries)
        if "bm25s" in lexical:
            figures["bm25s"] = bm25s_result = bench_bm25s(docs, lex_queries, args.work)
            rows.append(("lexical bm25s", str(bm25s_result)))
            print(rows[-1], flush=True)
        if "rag" in lexical:
            figures["rag_bm25"], (bm25, query_terms) = bench_rag_bm25(docs, lex_queries, args.work)
            rows.append(("lexical rag.lexical.BM25", str(figures["rag_bm25"])))
            print(rows[-1], flush=True)
        del docs
    if auto_store is not None and bm25 is not None:
        figures["hybrid"] = bench_hybrid(auto_store, bm25, query_terms, queries)
        h = figures["hybrid"]
        rows.append(
            (
                f"hybrid retrieve ({h['index_type']})",
                f"p50 {h['total_ms']['p50']:.1f} ms, p95 {h['total_ms']['p95']:.1f} ms (p50: embedding "
                f"{h['query_embedding_ms']['p50']:.1f}, vectors {h['vector_search_ms']['p50']:.1f}, "
                f"bm25 {h['bm25_ms']['p50']:.1f}, fusion {h['fusion_ms']['p50']:.2f} ms)",
            )
        )
    figures["load_average_at_end"] = os.getloadavg()
    emit(f"retrieval at {args.n:,} synthetic chunks", figures, rows)
    for name in ("bm25.json", "bm25.bin"):  # written by bench_rag_bm25
        (args.work / name).unlink(missing_ok=True)
    if not args.keep:
        del vectors
        (args.work / f"vectors-{args.n}-spread{args.spread}.f32").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
