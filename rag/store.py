"""Vector store: FAISS inner-product search over L2-normalised vectors with explicit int64 ids.

`IndexIDMap2` over `IndexFlatIP` gives exact search, `remove_ids` for deleted chunks and
`reconstruct` to carry unchanged vectors into a new index generation without re-embedding.
Files are written with FAISS's own serialiser, never pickle. Trade-off: flat search is exact
and linear in the number of vectors, which is right for document collections up to ~10^5 chunks.
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np


class VectorStore:
    def __init__(self, dim: int, index: faiss.Index | None = None) -> None:
        self.dim = dim
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.shape != (len(ids), self.dim):
            raise ValueError(f"expected vectors of shape ({len(ids)}, {self.dim}), got {vectors.shape}")
        self._index.add_with_ids(vectors, np.asarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        if len(ids) == 0:
            return 0
        return int(self._index.remove_ids(np.asarray(ids, dtype=np.int64)))

    def ids(self) -> np.ndarray:
        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def get(self, ids: np.ndarray) -> np.ndarray:
        """The stored vectors for `ids`, in order."""
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for row, id_ in enumerate(ids):
            out[row] = self._index.reconstruct(int(id_))
        return out

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the `k` nearest vectors per query; missing slots have id -1."""
        k = max(1, min(k, len(self)))
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if len(self) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        return self._index.search(queries, k)

    def save(self, path: Path) -> None:
        faiss.write_index(self._index, str(path))

    @classmethod
    def load(cls, path: Path) -> VectorStore:
        index = faiss.read_index(str(path))
        return cls(index.d, index)
