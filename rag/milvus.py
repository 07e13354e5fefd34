"""Vector store on Milvus: the same contract as rag.store.VectorStore, served by a Milvus database.

For teams whose index outgrows one machine: Milvus standalone or cluster (`milvus_uri`
http://host:19530, token from `RAG_MILVUS_TOKEN`) holds and searches the vectors, and Milvus
Lite (a local folder such as `./milvus.db`, `pip install 'rag[milvus]'`) runs the same code in
tests. pymilvus is imported only when this backend is chosen; the FAISS default needs none of it.

How index generations map to Milvus (rag.indexing):
- One collection per generation and per kind: `rag_<index folder hash>_gen_NNNNNN_chunks` and
  `..._sentences`, primary key the chunk's or sentence's int64 id, one FLOAT_VECTOR field, inner
  product. A refresh creates and fills the new generation's collections, flushes them, and only
  then writes the generation folder and switches CURRENT, so a crash mid-write leaves the old
  generation serving; its half-filled collections are dropped by the next refresh.
- The generation folder holds, instead of `chunks.faiss`, a small descriptor `chunks.milvus.json`
  (collection, dimension, index kind, vector count, URI), checksummed in the manifest like any
  file. Load checks the collection still holds that many vectors: a dropped or altered collection
  is reported as a damaged index, never served silently.
- When an old generation folder is removed (after its grace period, for replicas still serving
  it), its collections are dropped; collections of this index that no kept descriptor names (a
  killed refresh) are dropped too.
- Unchanged vectors are carried into the new generation by id (`get`), as with FAISS, so a
  refresh never re-embeds them and switching backends needs no re-embedding either.

Trade-offs: the whole collection is rewritten on each refresh, as the FAISS store is (segments
are issue 18's item 1); a server still serving an old generation must move to the new one
(rag.live_index) before its grace period ends and its collections are dropped. The
collection prefix comes from the index folder's absolute path: two deployments that share one
Milvus server and the same index path must use separate Milvus databases (`.../dbname` in the URI).
Index kinds map to Milvus's: flat -> FLAT, hnsw -> HNSW (same M, efConstruction, ef as
rag.store), ivfpq -> IVF_SQ8 (Milvus Lite has no IVF_PQ; SQ8 needs no re-ranking), auto -> FLAT
up to rag.store.FLAT_MAX_VECTORS, HNSW above (Milvus builds it server-side, per segment).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from rag import store as store_module
from rag.store import checked_batch

SUFFIX = ".milvus.json"
TOKEN_ENV = "RAG_MILVUS_TOKEN"
# Rows per insert or get request: 4,096 x 384 floats is 6 MB, well under gRPC's 64 MB message cap.
BATCH = 4096
QUERY_BATCH = 16_384  # Milvus's own cap on one query's limit
INSTALL_HINT = "the Milvus backend needs pymilvus (and, for a local file, milvus-lite): pip install 'rag[milvus]'"


class MilvusUnavailableError(RuntimeError):
    """pymilvus is missing, or the Milvus server cannot be reached or refused a request."""


def _pymilvus() -> Any:
    try:
        import pymilvus
    except ImportError as exc:
        raise MilvusUnavailableError(INSTALL_HINT) from exc
    return pymilvus


def is_local(uri: str) -> bool:
    """A Milvus Lite folder (./milvus.db) rather than a server address."""
    return "://" not in uri


def normalise_uri(uri: str) -> str:
    """An absolute path for Milvus Lite, so the URI recorded in a descriptor means the same from any folder."""
    if not uri:
        raise ValueError("the Milvus backend needs milvus_uri (--milvus-uri, RAG_MILVUS_URI)")
    return str(Path(uri).expanduser().resolve()) if is_local(uri) else uri


@functools.lru_cache(maxsize=8)
def _client_for(uri: str, token: str) -> Any:
    # One client per URI and process: Milvus Lite holds an exclusive lock on its folder, and a
    # server connection is worth reusing between the two stores and every query.
    pymilvus = _pymilvus()
    try:
        return pymilvus.MilvusClient(uri=uri, token=token)
    except Exception as exc:  # pymilvus raises MilvusException, grpc errors or OSError alike
        raise MilvusUnavailableError(f"cannot connect to Milvus at {uri}: {exc}") from exc


def client(uri: str) -> Any:
    return _client_for(normalise_uri(uri), os.environ.get(TOKEN_ENV, ""))


def collection_prefix(index_dir: Path) -> str:
    """`rag_` and 12 hex digits of the index folder's absolute path: this index's collections."""
    return "rag_" + hashlib.sha256(str(Path(index_dir).resolve()).encode("utf-8")).hexdigest()[:12]


def collection_name(index_dir: Path, generation: str, label: str) -> str:
    return f"{collection_prefix(index_dir)}_{generation.replace('-', '_')}_{label}"


def _index_params(kind: str, n_vectors: int) -> tuple[dict, dict]:
    """(index build params, search params) for Milvus, mirroring rag.store's constants."""
    if kind == "hnsw":
        params = {"M": store_module.HNSW_M, "efConstruction": store_module.HNSW_EF_CONSTRUCTION}
        build = {"index_type": "HNSW", "params": params}
        return build, {"ef": store_module.HNSW_EF_SEARCH}
    if kind == "ivfpq":
        nlist = store_module.ivf_lists(max(n_vectors, 1))
        nprobe = max(store_module.IVF_NPROBE_MIN, math.ceil(nlist * store_module.IVF_NPROBE_FRACTION))
        return {"index_type": "IVF_SQ8", "params": {"nlist": nlist}}, {"nprobe": min(nprobe, nlist)}
    return {"index_type": "FLAT", "params": {}}, {}


def _choose_kind(n_vectors: int, index_type: str) -> str:
    kind = store_module.choose_index_type(n_vectors, index_type)
    # Above the exact-search size, auto means HNSW here: Milvus builds it per segment of at most
    # ~100k rows (on a server, in the background while unindexed segments are searched exactly),
    # so its build time, which ruled it out for FAISS, no longer grows with the whole collection.
    return "hnsw" if index_type == "auto" and kind != "flat" else kind


def _call(what: str, fn, *args, **kwargs):
    """fn(...), with Milvus's own errors and lost connections raised as MilvusUnavailableError."""
    try:
        return fn(*args, **kwargs)
    except (_pymilvus().exceptions.MilvusException, OSError) as exc:
        raise MilvusUnavailableError(f"Milvus {what} failed: {exc}") from exc


class MilvusStore:
    """One Milvus collection of (int64 id, vector) rows, with VectorStore's methods."""

    def __init__(self, uri: str, collection: str, dim: int, kind: str, count: int, search_params: dict) -> None:
        self.uri = normalise_uri(uri)
        self.collection = collection
        self.dim = dim
        self._kind = kind
        self._count = count
        # Fixed when the collection is made, from the size it was made for, like its index.
        self._search_params = search_params

    @classmethod
    def create(cls, uri: str, collection: str, dim: int, index_type: str = "auto", expected: int = 0) -> MilvusStore:
        """A new, empty collection; one of the same name (left by a killed refresh) is dropped first.

        `expected` (the number of vectors about to be added) picks the index kind for `auto`:
        Milvus fixes a collection's index type when it is created.
        """
        store_module.choose_index_type(0, index_type)  # validate early
        pymilvus = _pymilvus()
        milvus = client(uri)
        kind = _choose_kind(expected, index_type)
        if _call("has_collection", milvus.has_collection, collection):
            _call("drop_collection", milvus.drop_collection, collection)
        schema = milvus.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=dim)
        build, search_params = _index_params(kind, expected)
        params = milvus.prepare_index_params()
        params.add_index("vector", metric_type="IP", **build)
        # Strong consistency: a search right after an insert (a refresh, then its first question)
        # must see every vector, as the FAISS store does.
        _call(
            "create_collection",
            milvus.create_collection,
            collection,
            schema=schema,
            index_params=params,
            consistency_level="Strong",
        )
        return cls(uri, collection, dim, kind, 0, search_params)

    @property
    def _client(self) -> Any:
        return client(self.uri)

    def __len__(self) -> int:
        return self._count

    @property
    def kind(self) -> str:
        return self._kind

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids, vectors = checked_batch(ids, vectors, self.dim)
        for i in range(0, len(ids), BATCH):
            rows = [{"id": int(k), "vector": v} for k, v in zip(ids[i : i + BATCH], vectors[i : i + BATCH].tolist())]
            _call("insert", self._client.insert, self.collection, rows)
        self._count += len(ids)

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        # Milvus's delete reports the ids it was given, present or not: count the present ones first.
        present = self._present(np.asarray(ids, dtype=np.int64))
        for i in range(0, len(present), BATCH):
            _call("delete", self._client.delete, self.collection, ids=[int(k) for k in present[i : i + BATCH]])
        self._count -= len(present)
        return len(present)

    def ids(self) -> np.ndarray:
        found: list[int] = []
        iterator = _call(
            "query",
            self._client.query_iterator,
            self.collection,
            batch_size=QUERY_BATCH,
            filter="",
            output_fields=["id"],
        )
        try:
            while batch := iterator.next():
                found.extend(row["id"] for row in batch)
        finally:
            iterator.close()
        return np.array(found, dtype=np.int64)

    def get(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors for `ids`, in order; an id not in the store raises RuntimeError."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        by_id: dict[int, list[float]] = {}
        for i in range(0, len(ids), BATCH):
            part = [int(k) for k in ids[i : i + BATCH]]
            rows = _call("get", self._client.get, self.collection, ids=part, output_fields=["vector"])
            by_id.update((row["id"], row["vector"]) for row in rows)
        missing = [int(k) for k in ids if int(k) not in by_id]
        if missing:
            raise RuntimeError(f"{len(missing)} ids not in Milvus collection {self.collection}, e.g. {missing[0]}")
        return np.array([by_id[int(k)] for k in ids], dtype=np.float32)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the `k` nearest vectors per query; missing slots have id -1."""
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if len(self) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        k = max(1, min(k, len(self)))
        results = _call(
            "search",
            self._client.search,
            self.collection,
            data=queries.tolist(),
            limit=k,
            output_fields=["id"],
            search_params={"metric_type": "IP", "params": self._search_params},
        )
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        found = np.full((len(queries), k), -1, dtype=np.int64)
        for q, hits in enumerate(results):
            for j, hit in enumerate(hits[:k]):
                scores[q, j] = hit["distance"]
                found[q, j] = hit["id"]
        return scores, found

    def save(self, path: Path) -> None:
        """Flush the collection (durable before CURRENT names it), then write its descriptor to `path`."""
        _call("flush", self._client.flush, self.collection)
        descriptor = {
            "backend": "milvus",
            "uri": self.uri,
            "collection": self.collection,
            "dimension": self.dim,
            "kind": self._kind,
            "count": self._count,
            "search_params": self._search_params,
        }
        Path(path).write_text(json.dumps(descriptor, indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path, index_type: str = "auto") -> MilvusStore:
        """Open the collection a descriptor names; `RAG_MILVUS_URI`, when set, overrides its URI.

        The override is for replicas that reach the same server by another address.
        """
        descriptor = json.loads(Path(path).read_text(encoding="utf-8"))
        uri = os.environ.get("RAG_MILVUS_URI") or descriptor["uri"]
        milvus = client(uri)
        name = descriptor["collection"]
        if not _call("has_collection", milvus.has_collection, name):
            raise ValueError(f"Milvus collection {name} named in {path} is missing from {uri}")
        _call("load_collection", milvus.load_collection, name)
        rows = _call("query", milvus.query, name, filter="", output_fields=["count(*)"])
        count = int(rows[0]["count(*)"])
        if count != descriptor["count"]:
            raise ValueError(f"Milvus collection {name} holds {count} vectors, but {path} says {descriptor['count']}")
        return cls(uri, name, int(descriptor["dimension"]), descriptor["kind"], count, descriptor["search_params"])

    def drop(self) -> None:
        _call("drop_collection", self._client.drop_collection, self.collection)

    def _present(self, ids: np.ndarray) -> np.ndarray:
        present: list[int] = []
        for i in range(0, len(ids), BATCH):
            part = [int(k) for k in ids[i : i + BATCH]]
            rows = _call("query", self._client.get, self.collection, ids=part, output_fields=["id"])
            present.extend(row["id"] for row in rows)
        return np.unique(np.array(present, dtype=np.int64))


def drop_described(gen_dir: Path) -> None:
    """Drop the collections named by a generation folder's descriptors (before the folder is deleted)."""
    for path in Path(gen_dir).glob(f"*{SUFFIX}"):
        try:
            descriptor = json.loads(path.read_text(encoding="utf-8"))
            milvus = client(os.environ.get("RAG_MILVUS_URI") or descriptor["uri"])
            _call("drop_collection", milvus.drop_collection, descriptor["collection"])
        except (OSError, ValueError, KeyError, MilvusUnavailableError):
            continue  # damaged, or the server is away: drop_orphans sweeps it up on a later refresh


def drop_orphans(uri: str, index_dir: Path, keep: set[str]) -> list[str]:
    """Drop this index's collections that no live descriptor names (left by a killed refresh)."""
    milvus = client(uri)
    prefix = collection_prefix(index_dir) + "_"
    dropped = [n for n in _call("list_collections", milvus.list_collections) if n.startswith(prefix) and n not in keep]
    for name in dropped:
        _call("drop_collection", milvus.drop_collection, name)
    return dropped
