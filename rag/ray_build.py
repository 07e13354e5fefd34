"""Building on a Ray cluster: documents are read, chunked and embedded by a pool of workers.

`rag index --ray [ADDRESS]` runs one Ray Data pipeline: the driver lists the corpus, each worker
(an actor holding the embedding model, loaded once) reads a batch of files, chunks the ones whose
content hash differs from the live index's, and embeds their chunks and sentences. The driver then
writes the generation exactly as a local build does (rag.indexing.refresh_index with a
PreparedCorpus): the same chunk ids, unchanged documents carried, vectors of unchanged chunks of a
changed document carried by id, checksums and the atomic switch of CURRENT.
Trade-offs: workers read the files by the driver's path, so every machine needs the corpus at that
path (a shared or synced folder); every file is read and hashed, as locally, but only changed ones
are chunked and embedded; all of a changed document's chunks are embedded, and those the old index
already holds are then carried instead; the vectors made come back to the driver and are held
there until the generation is written, like a local build's with an IVF-PQ index. `ray` is
imported only here, and only when a build asks for it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import pickle
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rag.chunking import chunk_document
from rag.config import Settings
from rag.crosslingual import document_terms
from rag.documents import Document, LoadError, corpus_paths, load_or_skip, normalize
from rag.embeddings import Embedder
from rag.indexing import PreparedCorpus, _rebuild_reason, read_manifest

INSTALL_HINT = "pip install 'rag[ray]'"
# Never send usage statistics, and no dashboard: the project runs offline.
_QUIET_RAY = {"RAY_USAGE_STATS_ENABLED": "0"}


class RayUnavailableError(RuntimeError):
    """`--ray` was asked for, but Ray is not installed or the cluster cannot be reached."""


class RayBuildError(RuntimeError):
    """A worker failed (a model it could not load, a machine lost): the driver wrote nothing."""


def _import_ray():
    os.environ.update(_QUIET_RAY)  # read when ray is imported and when a cluster starts
    try:
        import ray
        import ray.data
    except ImportError as exc:
        raise RayUnavailableError(f"building with --ray needs Ray, an optional extra: {INSTALL_HINT}") from exc
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # not a line per stage and block
    return ray


def text_key(text: str) -> int:
    """A 64-bit key for a text to embed: how the driver finds the vector a worker made for it."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little", signed=True)


@dataclass
class WorkerStats:
    """What one worker did, for `rag index --ray` to report and bench/ray_build.py to time."""

    documents: int = 0
    chunked: int = 0
    passages: int = 0  # chunk and sentence texts embedded
    busy_s: float = 0.0  # inside batches (reading, chunking, embedding)
    cpu_s: float = 0.0  # CPU time the worker process got meanwhile: busy_s on a core of its own
    first_start: float = math.inf  # wall clock (time.time) when its first batch started
    last_end: float = 0.0


@dataclass
class ClusterBuild:
    """What the cluster returned: the corpus for refresh_index, and per-worker statistics."""

    prepared: PreparedCorpus
    workers: dict[str, WorkerStats] = field(default_factory=dict)
    seconds: float = 0.0  # the pipeline's wall time, from submitting it to the last result

    @property
    def passages(self) -> int:
        return sum(w.passages for w in self.workers.values())

    def summary(self) -> str:
        busy = sum(w.busy_s for w in self.workers.values())
        return (
            f"ray: {len(self.workers)} workers read {sum(w.documents for w in self.workers.values())} files, "
            f"chunked {sum(w.chunked for w in self.workers.values())} and embedded {self.passages} passages "
            f"in {self.seconds:.1f} s ({busy:.1f} worker-seconds)"
        )


class PrecomputedEmbedder:
    """The driver's embedder for a Ray build: vectors the workers made, looked up by text.

    A text the workers did not embed (a document chunked on the driver after all) goes to the
    driver's own model, loaded only then; questions and token counts always do.
    """

    def __init__(self, inner: Embedder, keys: np.ndarray, vectors: np.ndarray) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self._row = {int(k): i for i, k in enumerate(keys)}
        self._vectors = vectors

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        rows = [self._row.get(text_key(t), -1) for t in texts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing = [i for i, r in enumerate(rows) if r < 0]
        found = [i for i, r in enumerate(rows) if r >= 0]
        if found:
            out[found] = self._vectors[[rows[i] for i in found]]
        if missing:
            out[missing] = self.inner.embed_passages([texts[i] for i in missing])
        return out

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self.inner.embed_queries(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self.inner.count_tokens(texts)


def texts_to_embed(chunks) -> list[str]:
    """A document's texts as rag.indexing embeds them: each chunk's, then each distinct sentence's."""
    texts = [c.search_text for c in chunks]
    for chunk in chunks:
        texts.extend(normalize(chunk.text[s.start - chunk.start : s.end - chunk.start]) for s in chunk.sentences)
    return list(dict.fromkeys(texts))


class BuildWorker:
    """One Ray actor: the embedding model loaded once, then batches of files read, chunked and embedded.

    Its settings come from the driver (model, cache folder, chunk sizes, limits), never from the
    worker machine's environment, so every worker builds what the driver would.
    """

    def __init__(self, config: dict) -> None:
        threads = int(config["threads"])
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            os.environ[name] = str(threads)
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch

        torch.set_num_threads(threads)
        from rag.embeddings import load_sentence_transformer_embedder

        self.config = config
        # Passages and token counts go through sentence-transformers for every model, the bundled one included.
        self.embedder = load_sentence_transformer_embedder(
            config["model"], Path(config["cache_dir"]), config["passage_precision"]
        )
        # What a first call loads (jieba's and CEDICT's dictionaries, the model's first pass) is
        # start-up, paid here once rather than inside the first batch.
        document_terms("warm up 预热")
        self.embedder.embed_passages(["warm up"])
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return build_batch(batch, self.embedder, self.config, self.worker)


def build_batch(batch: dict[str, np.ndarray], embedder: Embedder, config: dict, worker: str) -> dict[str, np.ndarray]:
    """Read a batch of files, chunk those whose hash is not `old_sha`, and embed their texts in one call.

    A row per file: its payload is (Document or LoadError, chunks, terms, text keys, vectors); the
    batch's statistics ride on its first row only, so they are counted once.
    """
    started, cpu, wall = time.perf_counter(), time.process_time(), time.time()
    cache_dir = Path(config["cache_dir"])
    results, texts, owners = [], [], []
    for doc_id, path, old_sha in zip(batch["doc_id"], batch["path"], batch["old_sha"]):
        read = load_or_skip(Path(path), str(doc_id), config["max_bytes"], config["ocr_languages"], cache_dir)
        chunks, terms = None, None
        if isinstance(read, Document) and read.content_hash != old_sha:
            chunks = chunk_document(read, embedder.count_tokens, config["chunk_tokens"], config["chunk_overlap"])
            terms = [document_terms(chunk.search_text) for chunk in chunks]
            mine = texts_to_embed(chunks)
            texts.extend(mine)
            owners.extend([len(results)] * len(mine))
        results.append((read, chunks, terms))
    vectors = embedder.embed_passages(texts)  # one call: the model sorts a batch's texts by length
    owners_np = np.asarray(owners, dtype=np.int64)
    keys = np.fromiter((text_key(t) for t in texts), dtype=np.int64, count=len(texts))
    # Pickled between this job's own processes, as Ray itself moves Python objects.
    payloads = [
        pickle.dumps((read, chunks, terms, keys[owners_np == i], vectors[owners_np == i]), protocol=5)
        for i, (read, chunks, terms) in enumerate(results)
    ]
    stats = {
        "documents": len(results),
        "chunked": sum(r[1] is not None for r in results),
        "passages": len(texts),
        "busy_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu,
        "start": wall,
        "end": time.time(),
    }
    n = len(results)
    return {
        "doc_id": np.asarray(batch["doc_id"], dtype=object),
        "payload": np.asarray(payloads, dtype=object),
        "worker": np.asarray([worker] * n, dtype=object),
        "stats": np.asarray([pickle.dumps(stats)] + [b""] * (n - 1), dtype=object),
    }


def worker_config(settings: Settings, threads: int = 1) -> dict:
    """The driver's settings a worker builds with: never the worker machine's own environment."""
    return {
        "model": settings.embed_model,
        "passage_precision": settings.passage_precision,
        "cache_dir": str(settings.cache_dir),
        "chunk_tokens": settings.chunk_tokens,
        "chunk_overlap": settings.chunk_overlap,
        "max_bytes": int(settings.max_document_mb * 2**20),
        "ocr_languages": settings.ocr_languages,
        "threads": threads,
    }


def _connect(ray, address: str | None) -> bool:
    """Connect to the cluster at `address`, or start a local one; True when this call started Ray."""
    if ray.is_initialized():  # a caller (a test, a notebook) connected already: use that cluster
        return False
    if address and address not in ("auto", "local"):
        try:
            ray.init(address=address, logging_level="WARNING", runtime_env={"env_vars": dict(_QUIET_RAY)})
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayUnavailableError(f"cannot connect to the Ray cluster at {address}: {exc}") from exc
        return True
    try:  # RAY_ADDRESS, else the cluster `ray start` made last on this machine
        ray.init(address="auto", logging_level="WARNING", runtime_env={"env_vars": dict(_QUIET_RAY)})
    except ConnectionError:
        start_local_cluster()
    return True


def start_local_cluster(num_cpus: int | None = None, temp_dir: str | None = None) -> None:
    """A Ray instance on this machine alone: every port on 127.0.0.1, no dashboard, no usage statistics.

    Ray binds a Linux node's ports on all interfaces; its switch for a loopback-only node (the
    default on macOS and Windows) is RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, set here for the processes
    it starts and restored after, so a later connection to a real cluster is unaffected.
    `temp_dir` must be short: Ray's socket paths under it have an OS length limit (~107 bytes).
    """
    ray = _import_ray()
    from ray._private import ray_constants

    switch = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    saved_env, saved = os.environ.get(switch), getattr(ray_constants, "ENABLE_RAY_CLUSTER", True)
    os.environ[switch] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False  # read by the driver's own address lookup
    try:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            logging_level="WARNING",
            runtime_env={"env_vars": dict(_QUIET_RAY)},
            _temp_dir=temp_dir,
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(switch, None)
        else:
            os.environ[switch] = saved_env


def build_on_cluster(
    settings: Settings,
    embedder: Embedder,
    address: str | None = None,
    rebuild: bool = False,
    workers: int | None = None,
    threads: int = 1,
) -> ClusterBuild:
    """Read, chunk and embed `settings.corpus_dir` on the Ray cluster at `address` (None or "auto": local).

    `workers` actors of `threads` CPUs each (default: as many as the cluster's CPUs allow). Documents
    whose content hash is the live index's are read but not chunked or embedded, unless `rebuild`.
    """
    ray = _import_ray()
    paths = corpus_paths(settings.corpus_dir)
    old_sha = {} if rebuild else _indexed_hashes(settings, embedder)
    started_ray = False
    started = time.perf_counter()
    try:
        if paths:
            started_ray = _connect(ray, address)
            rows = _run_pipeline(ray, settings, embedder, paths, old_sha, workers, threads)
        else:
            rows = []
        built = collect(rows, embedder)  # the pipeline runs as its rows are read
        built.seconds = time.perf_counter() - started
        return built
    except ray.exceptions.RayError as exc:  # a worker failed: nothing was written, the index is as it was
        raise RayBuildError(f"the build on the Ray cluster failed, the index was left as it was: {exc}") from exc
    finally:
        if started_ray:
            ray.shutdown()


def _indexed_hashes(settings: Settings, embedder: Embedder) -> dict[str, str]:
    """doc_id -> sha256 in the live index, when a refresh would carry its chunks; else nothing.

    Read without the index lock: only a guess of what is unchanged. refresh_index decides under
    the lock, and chunks and embeds on the driver whatever this guess missed.
    """
    manifest = read_manifest(settings.index_dir)
    if manifest is None or _rebuild_reason(manifest, settings, embedder) is not None:
        return {}
    return {doc_id: entry.get("sha256", "") for doc_id, entry in (manifest.get("documents") or {}).items()}


def _run_pipeline(ray, settings, embedder, paths, old_sha, workers, threads) -> Iterable[dict]:
    cpus = int(ray.cluster_resources().get("CPU", 1))
    workers = max(1, workers or cpus // threads)
    # Many small batches, handed to a worker only when it is free: the last worker to finish then
    # trails by at most one batch (with 4 queued per worker, one trailed by 40 s of 190).
    batch = max(1, min(64, math.ceil(len(paths) / (workers * 16))))
    items = input_rows(paths, old_sha)
    config = worker_config(settings, threads)
    print(
        f"ray: {len(paths)} files on {workers} workers of {threads} CPU ({cpus} CPUs in the cluster)", file=sys.stderr
    )
    dataset = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / batch))
    built = dataset.map_batches(
        BuildWorker,
        fn_constructor_kwargs={"config": config},
        batch_size=batch,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
        num_cpus=threads,
        runtime_env={"env_vars": {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}},
    )
    return built.iter_rows()  # streamed: each row is unpacked as it arrives, not held twice


def input_rows(paths: list[tuple[str, Path]], old_sha: dict[str, str]) -> list[dict]:
    """The pipeline's input: a file to read, and the hash under which the live index holds it ("" if none)."""
    return [{"doc_id": doc_id, "path": str(path), "old_sha": old_sha.get(doc_id, "")} for doc_id, path in paths]


def collect(rows: Iterable[dict], embedder: Embedder) -> ClusterBuild:
    """The workers' rows as one PreparedCorpus, in load_corpus's order, and their statistics."""
    documents: list[Document] = []
    skipped: list[LoadError] = []
    chunked = {}
    keys, vectors = [], []
    stats: dict[str, WorkerStats] = {}
    for row in rows:
        read, chunks, terms, row_keys, row_vectors = pickle.loads(row["payload"])
        if isinstance(read, Document):
            documents.append(read)
            if chunks is not None:
                chunked[read.doc_id] = (chunks, terms)
                keys.append(row_keys)
                vectors.append(row_vectors)
        else:
            skipped.append(read)
        if row["stats"]:
            s = pickle.loads(row["stats"])
            w = stats.setdefault(row["worker"], WorkerStats())
            w.documents += s["documents"]
            w.chunked += s["chunked"]
            w.passages += s["passages"]
            w.busy_s += s["busy_s"]
            w.cpu_s += s["cpu_s"]
            w.first_start = min(w.first_start, s["start"])
            w.last_end = max(w.last_end, s["end"])
    documents.sort(key=lambda d: d.doc_id)  # load_corpus's order: results arrive as workers finish
    skipped.sort(key=lambda e: e.doc_id)
    all_keys = np.concatenate(keys) if keys else np.zeros(0, dtype=np.int64)
    all_vectors = np.concatenate(vectors) if vectors else np.zeros((0, embedder.dim), dtype=np.float32)
    prepared = PreparedCorpus(documents, skipped, chunked, PrecomputedEmbedder(embedder, all_keys, all_vectors))
    return ClusterBuild(prepared, stats)
