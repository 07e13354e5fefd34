"""Lexical search: BM25 over terms from a tokenizer that handles Chinese and English.

Chinese runs are segmented with jieba (search mode, so both 长三角 and 三角 match); Latin words
are lower-cased; numbers, dates and alphanumeric codes (585, 2023, G60, 5G, 1.2) stay whole.
English terms are not stemmed (exact word forms; see the README's eval notes). The BM25 weight
matrix is rebuilt from all terms whenever the index is written (idf depends on every document,
so it cannot be patched per document) and saved as a raw binary file beside a JSON layout, which
a reader memory-maps: at 1M chunks rebuilding it at every load took 25-42 s. Trade-off: each
refresh pays the full rebuild, and the file is a second copy of what the stored terms say.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import sparse

_TOKEN = re.compile(
    r"[\u3400-\u9fff\uf900-\ufaff]+"  # a run of Chinese characters
    r"|\d+(?:[.,:]\d+)*[A-Za-z]*"  # numbers, decimals, dates, 5G
    r"|[A-Za-z]+\d+[A-Za-z\d]*"  # codes like G60
    r"|[A-Za-z]+(?:'[A-Za-z]+)?",  # words
)
_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")

# Words so common in questions and news text that matching them says nothing.
STOPWORDS = frozenset(
    """a an the of in on at to for from by with and or but is are was were be been being
    what which who whom whose when where why how many much does did do has have had it its
    this that these those as into than then there their they them he she his her i you we our
    us will would can could should may might about after before over under between during
    also not no yes s
    的 了 和 是 在 有 与 及 等 为 对 也 就 都 而 并 之 中 上 下 个 这 那 哪 什么 多少 哪些 谁 吗 呢 几 如何 怎么
    """.split()
)

_jieba = None


def _segmenter():
    global _jieba
    if _jieba is None:
        import jieba

        from rag.config import Settings

        jieba.setLogLevel(logging.WARNING)
        # jieba builds its dictionary (~1-2 s) into a cache file it then reloads (0.4-1 s), by
        # default in the system's temp folder, which reboots and cleaners empty: keep it with our
        # other caches. jieba writes it under a unique temporary name and renames it.
        cache_dir = Settings.from_env().cache_dir
        cache_dir.mkdir(parents=True, exist_ok=True)
        jieba.dt.tmp_dir = str(cache_dir)
        _jieba = jieba
    return _jieba


def segment(run: str) -> list[str]:
    """Plain jieba segmentation of a run of Chinese characters (each character used once)."""
    return _segmenter().lcut(run)


def tokenize(text: str) -> list[str]:
    """Search terms of `text` (expects NFKC-normalised input), stopwords removed."""
    terms: list[str] = []
    for match in _TOKEN.finditer(text):
        token = match.group()
        if _CJK_RUN.fullmatch(token):
            terms.extend(w for w in _segmenter().cut_for_search(token) if w not in STOPWORDS)
        else:
            token = token.lower()
            if token not in STOPWORDS:
                terms.append(token.replace(",", ""))
    return terms


class BM25:
    """Okapi BM25 over a fixed set of documents given as term lists."""

    # Written by `save`, read by `load`: the layout (vocabulary, sizes) and the raw arrays.
    FILES = ("bm25.json", "bm25.bin")
    _FORMAT = 1
    # indptr, idf, indices, data, in file order, fixed little-endian: the file chooses no dtype.
    # Largest itemsize first keeps each section aligned for its dtype inside the mapping.
    _DTYPES = (np.dtype("<i8"), np.dtype("<f4"), np.dtype("<i4"), np.dtype("<f4"))

    def __init__(self, docs: Sequence[Sequence[str]], k1: float = 1.2, b: float = 0.75) -> None:
        self.vocabulary: dict[str, int] = {}
        rows, cols, vals = [], [], []
        lengths = np.zeros(len(docs), dtype=np.float32)
        for row, terms in enumerate(docs):
            lengths[row] = len(terms)
            for term, tf in Counter(terms).items():
                rows.append(row)
                cols.append(self.vocabulary.setdefault(term, len(self.vocabulary)))
                vals.append(tf)
        n_docs = max(len(docs), 1)
        tf = sparse.csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(len(docs), len(self.vocabulary)))
        df = np.bincount(tf.indices, minlength=len(self.vocabulary)).astype(np.float32)
        self.idf = np.log1p((n_docs - df + 0.5) / (df + 0.5)).astype(np.float32)
        avg = float(lengths.mean()) if len(docs) else 1.0
        norm = k1 * (1 - b + b * lengths / max(avg, 1e-9))
        # Precompute each (doc, term) weight so a query is one sparse column sum.
        tf = tf.tocoo()
        weights = tf.data * (k1 + 1) / (tf.data + norm[tf.row]) * self.idf[tf.col]
        csc = sparse.csc_matrix((weights, (tf.row, tf.col)), shape=tf.shape)
        # Column `col` holds the documents containing term `col`: rows indices[indptr[col]:indptr[col+1]].
        self._indptr, self._indices, self._data = csc.indptr, csc.indices, csc.data
        self.n_docs = len(docs)

    def save(self, layout_path: Path, arrays_path: Path) -> None:
        """Write the matrix as raw arrays plus a JSON layout (no pickle: `load` maps the bytes)."""
        vocabulary = sorted(self.vocabulary, key=self.vocabulary.__getitem__)
        layout = {"format": self._FORMAT, "n_docs": self.n_docs, "nnz": len(self._indices), "vocabulary": vocabulary}
        layout_path.write_text(json.dumps(layout, ensure_ascii=False), encoding="utf-8")
        with arrays_path.open("wb") as fh:
            for array, dtype in zip((self._indptr, self.idf, self._indices, self._data), self._DTYPES):
                fh.write(np.ascontiguousarray(array, dtype=dtype).data)

    @classmethod
    def load(cls, layout_path: Path, arrays_path: Path) -> BM25:
        """A BM25 whose arrays are memory-mapped read-only from `arrays_path` (pages load on use)."""
        layout = json.loads(layout_path.read_text(encoding="utf-8"))
        if layout.get("format") != cls._FORMAT:
            raise ValueError(f"{layout_path} has BM25 format {layout.get('format')}, not {cls._FORMAT}")
        vocabulary, nnz, n_docs = layout["vocabulary"], int(layout["nnz"]), int(layout["n_docs"])
        lengths = (len(vocabulary) + 1, len(vocabulary), nnz, nnz)
        expected = sum(n * dtype.itemsize for n, dtype in zip(lengths, cls._DTYPES))
        raw = np.memmap(arrays_path, dtype=np.uint8, mode="r")
        if raw.size != expected:
            raise ValueError(f"{arrays_path} holds {raw.size} bytes; its layout in {layout_path} needs {expected}")
        arrays, offset = [], 0
        for n, dtype in zip(lengths, cls._DTYPES):
            arrays.append(np.frombuffer(raw, dtype=dtype, count=n, offset=offset))  # a view: no copy, no read
            offset += n * dtype.itemsize
        bm25 = cls.__new__(cls)
        bm25.vocabulary = {term: col for col, term in enumerate(vocabulary)}
        bm25._indptr, bm25.idf, bm25._indices, bm25._data = arrays
        bm25.n_docs = n_docs
        if len(bm25.vocabulary) != len(vocabulary) or bm25._indptr[-1] != nnz:
            raise ValueError(f"{layout_path} does not match {arrays_path}")
        return bm25

    def term_ids(self, terms: Sequence[str]) -> list[int]:
        return [self.vocabulary[t] for t in terms if t in self.vocabulary]

    def scores(self, terms: Sequence[str], weights: Sequence[float] | None = None) -> np.ndarray:
        """BM25 score of every document for the query `terms` (optionally weighted)."""
        out = np.zeros(self.n_docs, dtype=np.float32)
        weights = weights if weights is not None else [1.0] * len(terms)
        for term, weight in zip(terms, weights):
            col = self.vocabulary.get(term)
            if col is None:
                continue
            start, end = self._indptr[col], self._indptr[col + 1]
            out[self._indices[start:end]] += weight * self._data[start:end]
        return out

    def top(self, terms: Sequence[str], k: int, weights: Sequence[float] | None = None):
        """(rows, scores) of the `k` best-scoring documents with a positive score."""
        scores = self.scores(terms, weights)
        positive = np.flatnonzero(scores > 0)
        if len(positive) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if len(positive) > k:  # select before sorting: at 1M chunks a full sort cost 74 ms, this 12
            positive = positive[np.argpartition(-scores[positive], k - 1)[:k]]
        order = positive[np.argsort(-scores[positive], kind="stable")]
        return order, scores[order]

    def rows_with(self, term: str) -> np.ndarray:
        """Rows of the documents that contain `term`."""
        col = self.vocabulary.get(term)
        if col is None:
            return np.zeros(0, np.int64)
        return self._indices[self._indptr[col] : self._indptr[col + 1]]

    def idf_of(self, term: str) -> float:
        col = self.vocabulary.get(term)
        return float(self.idf[col]) if col is not None else math.log1p(self.n_docs + 0.5)
