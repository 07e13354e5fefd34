"""Vector store: FAISS inner-product search over L2-normalised vectors with explicit int64 ids.

Every index type sits inside `IndexIDMap2`, so callers see the same contract whatever the type:
`add` with explicit int64 ids, `remove` for deleted chunks, `get` (reconstruct) to carry
unchanged vectors into a new index generation without re-embedding, and `save`/`load` through
FAISS's own serialiser, never pickle. The file is self-describing: `load` needs no settings.
This is the default backend; rag.milvus keeps the same contract in a Milvus server
(`vector_backend` milvus), and `load_store` opens either from a generation's file.

Index type (`index_type` setting, `RAG_INDEX_TYPE`: auto | flat | hnsw | ivfpq):
- flat: exact search, linear in the number of vectors.
- hnsw: HNSW graph over the full vectors (M=32); fast queries, slow build.
- ivfpq: IVF-PQ picks candidates, which are re-ranked on the full vectors (`IndexRefineFlat`).
- auto (default): flat up to FLAT_MAX_VECTORS (200,000), ivfpq above.

Why (bench/scale.py at 1M synthetic e5-like vectors, 2 busy cores; bench/RESULTS.md): a flat
query reads every vector (1.5 GB at 1M): 111 ms p50 at 1M, so about 20 ms at 200k, where exact
search is still affordable and needs no training. Above it, IVF-PQ (4*sqrt(n) lists, 1/16 of
them probed, 8 candidates per result re-ranked on full vectors) gives recall@10 0.97 against
exact search at 2.6 ms p50 (k=40), builds in 103 s and holds 1.6 GB; at 5M (8,944 lists) the
same defaults gave 0.954 at 9.3 ms p50, built in 344 s, holding 7.9 GB. HNSW (efSearch 128) is
faster and more accurate (1.1 ms, 0.995) but took 939 s to build and 1.7 GB; a store is built
whenever a segment that large is written (a full build or a merge, rag.indexing), so build time
decides. A refresh's own segment is small, hence flat: no training on a refresh.

Trade-off: hnsw and ivfpq cannot delete in place, so `remove` rebuilds them from the remaining
vectors (ivfpq keeps its trained quantisers), and ivfpq is retrained when the store has grown
enough that its number of lists is outdated. Search parameters are fixed module constants.
"""

from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

INDEX_TYPES = ("auto", "flat", "hnsw", "ivfpq")
# Above this many vectors `auto` leaves exact search (see the module docstring).
FLAT_MAX_VECTORS = 200_000
AUTO_LARGE_TYPE = "ivfpq"

HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128
# Lists probed: 1/16 of them (at least 32). At 1M vectors (4,000 lists) 1/16 is the first swept
# setting with recall@10 >= 0.95 (bench/RESULTS.md).
IVF_NPROBE_FRACTION = 1 / 16
IVF_NPROBE_MIN = 32
REFINE_K_FACTOR = 8  # PQ candidates re-ranked on full vectors per result asked for
REFINE_MIN_CANDIDATES = 64
TRAINING_POINTS_PER_LIST = 64


def choose_index_type(n_vectors: int, index_type: str = "auto") -> str:
    """The concrete index type (flat | hnsw | ivfpq) for a store of `n_vectors`."""
    if index_type not in INDEX_TYPES:
        raise ValueError(f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}")
    if index_type != "auto":
        return index_type
    return "flat" if n_vectors <= FLAT_MAX_VECTORS else AUTO_LARGE_TYPE


def ivf_lists(n_vectors: int) -> int:
    """About 4 * sqrt(n) lists, but never fewer than 39 training points per list."""
    return max(1, min(int(4 * math.sqrt(n_vectors)), n_vectors // 39))


def _pq_shape(dim: int, n_vectors: int) -> tuple[int, int]:
    """(sub-quantisers, bits): 8 dimensions per sub-quantiser, 8 bits once there is data for them."""
    m = max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)
    bits = int(min(8, max(1, math.floor(math.log2(max(n_vectors, 78) / 39)))))
    return m, bits


def _kind(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index)
    if isinstance(inner, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(inner, faiss.IndexRefine):
        return "ivfpq"
    return "flat"


def checked_batch(ids: np.ndarray, vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """`ids` as int64 and `vectors` as contiguous float32 of shape (len(ids), dim), for any backend's add."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.shape != (len(ids), dim):
        raise ValueError(f"expected vectors of shape ({len(ids)}, {dim}), got {vectors.shape}")
    return np.asarray(ids, dtype=np.int64), vectors


class VectorStore:
    def __init__(self, dim: int, index_type: str = "auto", index: faiss.Index | None = None) -> None:
        choose_index_type(0, index_type)  # validate early, before any vectors arrive
        self.dim = dim
        self.index_type = index_type
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        self._set_search_params()

    def __len__(self) -> int:
        return int(self._index.ntotal)

    @property
    def kind(self) -> str:
        """The index type in use: flat, hnsw or ivfpq."""
        return _kind(self._index)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids, vectors = checked_batch(ids, vectors, self.dim)
        target = choose_index_type(len(self) + len(ids), self.index_type)
        if target == self.kind and not self._outgrown(len(self) + len(ids)):
            self._index.add_with_ids(vectors, ids)
        elif len(self) == 0:
            self._rebuild(target, ids, vectors)
        else:
            old_ids = self.ids()
            self._rebuild(target, np.concatenate([old_ids, ids]), np.vstack([self.get(old_ids), vectors]))

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        ids = np.asarray(ids, dtype=np.int64)
        before = len(self)
        keep_ids = self.ids()
        keep_ids = keep_ids[~np.isin(keep_ids, ids)]
        target = choose_index_type(len(keep_ids), self.index_type)
        if self.kind == "flat" and target == "flat":
            return int(self._index.remove_ids(ids))
        # HNSW graphs and IndexRefine cannot delete in place: rebuild from what remains.
        self._rebuild(target, keep_ids, self.get(keep_ids))
        return before - len(self)

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def get(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors for `ids`, in order (exact for every index type)."""
        ids = np.asarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._index.reconstruct_batch(ids)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the `k` nearest vectors per query; missing slots have id -1."""
        k = max(1, min(k, len(self)))
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if len(self) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        if self.kind == "ivfpq":
            # A few PQ candidates are too few to re-rank when k is small: ask for at least a floor.
            refine = faiss.downcast_index(self._index.index)
            params = faiss.IndexRefineSearchParameters(k_factor=max(refine.k_factor, REFINE_MIN_CANDIDATES / k))
            return self._index.search(queries, k, params=params)
        return self._index.search(queries, k)

    def search_live(
        self, queries: np.ndarray, k: int, selector: faiss.IDSelector, id_map: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """`search` among the positions `selector` accepts (deleted chunks of a segment are filtered
        inside FAISS, so the `k` results are all live); `id_map` is `ids()`, kept by the caller."""
        k = max(1, min(k, len(self)))
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if len(self) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        # The selector speaks of the inner index's positions, so the inner index is searched and
        # positions mapped to ids here (IndexIDMap2 would translate a selector over ids, but not
        # into IndexRefine's base index).
        inner = faiss.downcast_index(self._index.index)
        kind = self.kind
        if kind == "ivfpq":
            base = faiss.SearchParametersIVF(sel=selector, nprobe=self._ivf().nprobe)
            params = faiss.IndexRefineSearchParameters(
                k_factor=max(inner.k_factor, REFINE_MIN_CANDIDATES / k), base_index_params=base
            )
            params._base = base  # the parameters hold a raw pointer: keep it alive as long as they are
        elif kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=inner.hnsw.efSearch)
        else:
            params = faiss.SearchParameters(sel=selector)
        scores, positions = inner.search(queries, k, params=params)
        return scores, np.where(positions >= 0, id_map[np.maximum(positions, 0)], -1)

    def set_search_params(
        self, ef_search: int | None = None, nprobe: int | None = None, k_factor: float | None = None
    ) -> None:
        """Override the speed/recall knobs of the index in use (for benchmarks; `load` resets them)."""
        self._set_search_params(ef_search, nprobe, k_factor)

    def save(self, path: Path) -> None:
        faiss.write_index(self._index, str(path))

    @classmethod
    def load(cls, path: Path, index_type: str = "auto", mapped: bool = False) -> VectorStore:
        """`mapped`: the vectors stay in the file, memory-mapped (for reading a few by id, as a refresh
        carries an edited document's unchanged vectors), instead of being read whole."""
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mapped else 0)
        return cls(index.d, index_type, index)

    # ----------------------------------------------------------------------- internals

    def _outgrown(self, n_vectors: int) -> bool:
        """An IVF trained for far fewer vectors has lists that are too long: retrain it."""
        if self.kind != "ivfpq":
            return False
        return ivf_lists(n_vectors) > 2 * self._ivf().nlist

    def _ivf(self) -> faiss.IndexIVF:
        return faiss.extract_index_ivf(faiss.downcast_index(self._index.index).base_index)

    def _rebuild(self, kind: str, ids: np.ndarray, vectors: np.ndarray) -> None:
        if kind == "flat":
            inner = faiss.IndexFlatIP(self.dim)
        elif kind == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            inner.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
        else:
            inner = faiss.IndexRefineFlat(self._trained_ivfpq(vectors))
        index = faiss.IndexIDMap2(inner)
        index.add_with_ids(vectors, ids)
        self._index = index
        self._set_search_params()

    def _trained_ivfpq(self, vectors: np.ndarray) -> faiss.Index:
        n = len(vectors)
        if self.kind == "ivfpq" and self._ivf().nlist == ivf_lists(n):
            base = faiss.clone_index(self._ivf())  # same size class: keep the trained quantisers
            base.reset()
            return base
        m, bits = _pq_shape(self.dim, n)
        quantiser = faiss.IndexFlatIP(self.dim)
        base = faiss.IndexIVFPQ(quantiser, self.dim, ivf_lists(n), m, bits, faiss.METRIC_INNER_PRODUCT)
        sample = min(n, TRAINING_POINTS_PER_LIST * base.nlist)
        rows = np.sort(np.random.default_rng(0).choice(n, sample, replace=False))
        base.train(np.ascontiguousarray(vectors[rows], dtype=np.float32))
        return base

    def _set_search_params(
        self, ef_search: int | None = None, nprobe: int | None = None, k_factor: float | None = None
    ) -> None:
        kind = self.kind
        if kind == "hnsw":
            faiss.downcast_index(self._index.index).hnsw.efSearch = ef_search or HNSW_EF_SEARCH
        elif kind == "ivfpq":
            faiss.downcast_index(self._index.index).k_factor = k_factor or REFINE_K_FACTOR
            ivf = self._ivf()
            ivf.nprobe = nprobe or max(IVF_NPROBE_MIN, math.ceil(ivf.nlist * IVF_NPROBE_FRACTION))


class SegmentedStore:
    """Several stores searched as one, each less its deleted ids: an index of several segments.

    `search` asks each segment for its `k` best live vectors (FAISS filters the deleted ones out
    while it searches, through an IDSelector over positions) and keeps the `k` best of them all;
    `get` reads a vector from the newest segment that has it (a vector is a function of its id's
    text, so any copy is the same). Read-only: a refresh writes new segments instead.
    """

    def __init__(self, parts: list[tuple[VectorStore, np.ndarray]]) -> None:
        self.dim = parts[0][0].dim if parts else 0
        self._parts = []
        for store, deleted in parts:
            ids = store.ids()
            live = ~np.isin(ids, deleted) if len(deleted) else None
            selector = bitmap = None
            if live is not None:
                bitmap = np.packbits(live, bitorder="little")
                selector = faiss.IDSelectorBitmap(len(live), faiss.swig_ptr(bitmap))
            live_ids = ids if live is None else ids[live]
            self._parts.append([store, ids, None, live_ids, selector, bitmap])

    def __len__(self) -> int:
        return sum(len(part[3]) for part in self._parts)

    @property
    def kind(self) -> str:
        """The index type of the largest segment."""
        return max(self._parts, key=lambda part: len(part[0]))[0].kind if self._parts else "flat"

    @property
    def stores(self) -> list:
        return [part[0] for part in self._parts]

    def ids(self) -> np.ndarray:
        return np.concatenate([part[3] for part in self._parts]) if self._parts else np.zeros(0, np.int64)

    def _sorted_ids(self, part: list) -> np.ndarray:
        if part[2] is None:  # sorted once, when first needed: searching needs no sort
            part[2] = np.sort(part[1])
        return part[2]

    def _found(self, part: list, ids: np.ndarray) -> np.ndarray:
        sorted_ids = self._sorted_ids(part)
        at = np.searchsorted(sorted_ids, ids)
        found = at < len(sorted_ids)
        found[found] = sorted_ids[at[found]] == ids[found]
        return found

    def contains(self, ids: np.ndarray) -> np.ndarray:
        """True where some segment holds a vector for the id (deleted or not: see `get`)."""
        ids = np.asarray(ids, dtype=np.int64)
        found = np.zeros(len(ids), dtype=bool)
        for part in self._parts:
            found |= self._found(part, ids)
        return found

    def get(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        todo = np.ones(len(ids), dtype=bool)
        for part in reversed(self._parts):
            if not todo.any():
                break
            found = todo & self._found(part, ids)
            if found.any():
                out[found] = part[0].get(ids[found])
                todo &= ~found
        if todo.any():
            raise RuntimeError(f"no vector with id {int(ids[todo][0])} in any segment")
        return out

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, len(self)))
        found_scores, found_ids = [], []
        for store, ids, _, live_ids, selector, _ in self._parts:
            if not len(live_ids):
                continue
            if selector is None:
                scores, labels = store.search(queries, k)
            else:
                scores, labels = store.search_live(queries, min(k, len(live_ids)), selector, ids)
            found_scores.append(np.where(labels >= 0, scores, -np.inf))
            found_ids.append(labels)
        if not found_ids:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        scores, labels = np.concatenate(found_scores, axis=1), np.concatenate(found_ids, axis=1)
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        scores, labels = np.take_along_axis(scores, order, 1), np.take_along_axis(labels, order, 1)
        return scores.astype(np.float32), np.where(np.isfinite(scores), labels, -1)


# --------------------------------------------------------------------------- backends

# Where vectors live (the `vector_backend` setting): FAISS files in the index folder, or Milvus
# (rag.milvus, imported only when chosen, so the default needs no extra package).
BACKENDS = ("faiss", "milvus")


def store_file(label: str, backend: str = "faiss") -> str:
    """The file in a generation folder that holds (faiss) or describes (milvus) the `label` vectors."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown vector backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    return f"{label}.faiss" if backend == "faiss" else f"{label}.milvus.json"


def load_store(path: Path, mapped: bool = False):
    """The store a segment file holds or describes: a VectorStore, or a rag.milvus.MilvusStore.

    `mapped`: a FAISS file's vectors are memory-mapped rather than read (VectorStore.load)."""
    if path.name.endswith(".milvus.json"):
        from rag.milvus import MilvusStore

        return MilvusStore.load(path)
    return VectorStore.load(path, mapped=mapped)
