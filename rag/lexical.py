"""Lexical search: BM25 over terms from a tokenizer that handles Chinese and English.

Chinese runs are segmented with jieba (search mode, so both 长三角 and 三角 match); Latin words
are lower-cased; numbers, dates and alphanumeric codes (585, 2023, G60, 5G, 1.2) stay whole.
English terms are not stemmed (exact word forms; see the README's eval notes). An index stores,
per segment, raw term frequencies and document lengths (`Postings`, a raw binary file beside a
JSON layout, memory-mapped): counting them again from the terms at every load took 25-42 s at
1M chunks. idf and the average length depend on every document, so `SegmentedBM25` weighs all
segments at load with the statistics of their live documents together. Trade-off: each load
pays that weighing (one pass over the postings), and the file is a second copy of what the
stored terms say.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
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
        arrays = (self._indptr, self.idf, self._indices, self._data)
        _save_arrays(layout_path, arrays_path, layout, arrays, self._DTYPES)

    @classmethod
    def load(cls, layout_path: Path, arrays_path: Path) -> BM25:
        """A BM25 whose arrays are memory-mapped read-only from `arrays_path` (pages load on use)."""
        layout, arrays = _load_arrays(
            layout_path,
            arrays_path,
            cls._FORMAT,
            cls._DTYPES,
            lambda vocabulary, n_docs, nnz: (len(vocabulary) + 1, len(vocabulary), nnz, nnz),
        )
        vocabulary, nnz = layout["vocabulary"], int(layout["nnz"])
        bm25 = cls.__new__(cls)
        bm25.vocabulary = {term: col for col, term in enumerate(vocabulary)}
        bm25._indptr, bm25.idf, bm25._indices, bm25._data = arrays
        bm25.n_docs = int(layout["n_docs"])
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


class Postings:
    """One index segment's term frequencies and document lengths: BM25 without the statistics.

    A segment's weights depend on the whole collection (idf counts documents in every segment,
    and the average length is over all of them), so a segment stores raw term frequencies and
    `SegmentedBM25` weighs them at load with collection-wide statistics: an index of several
    segments, some documents deleted, scores exactly as one BM25 built over its live documents.
    """

    FILES = ("bm25.json", "bm25.bin")
    _FORMAT = 2
    # indptr, lengths, indices, tf, in file order, fixed little-endian (largest itemsize first).
    _DTYPES = (np.dtype("<i8"), np.dtype("<f4"), np.dtype("<i4"), np.dtype("<f4"))

    def __init__(
        self, vocabulary: list[str], indptr: np.ndarray, lengths: np.ndarray, indices: np.ndarray, tf: np.ndarray
    ) -> None:
        self.vocabulary = vocabulary  # column -> term
        self.indptr, self.lengths, self.indices, self.tf = indptr, lengths, indices, tf

    @property
    def n_docs(self) -> int:
        return len(self.lengths)

    @classmethod
    def build(cls, docs: Sequence[Sequence[str]]) -> Postings:
        """Columns in first-seen order and rows ascending within a column, as BM25 builds them."""
        vocabulary: dict[str, int] = {}
        rows, cols, vals = [], [], []
        lengths = np.zeros(len(docs), dtype=np.float32)
        for row, terms in enumerate(docs):
            lengths[row] = len(terms)
            for term, tf in Counter(terms).items():
                rows.append(row)
                cols.append(vocabulary.setdefault(term, len(vocabulary)))
                vals.append(tf)
        csc = sparse.csc_matrix(
            (np.asarray(vals, np.float32), (np.asarray(rows, np.int64), np.asarray(cols, np.int64))),
            shape=(len(docs), len(vocabulary)),
        )
        return cls(list(vocabulary), csc.indptr, lengths, csc.indices, csc.data)

    def save(self, layout_path: Path, arrays_path: Path) -> None:
        layout = {
            "format": self._FORMAT,
            "n_docs": self.n_docs,
            "nnz": len(self.indices),
            "vocabulary": self.vocabulary,
        }
        _save_arrays(layout_path, arrays_path, layout, (self.indptr, self.lengths, self.indices, self.tf), self._DTYPES)

    @classmethod
    def load(cls, layout_path: Path, arrays_path: Path) -> Postings:
        """Arrays memory-mapped read-only from `arrays_path`; the layout is checked against its size."""
        layout, arrays = _load_arrays(
            layout_path,
            arrays_path,
            cls._FORMAT,
            cls._DTYPES,
            lambda vocabulary, n_docs, nnz: (len(vocabulary) + 1, n_docs, nnz, nnz),
        )
        vocabulary, nnz = layout["vocabulary"], int(layout["nnz"])
        postings = cls(vocabulary, *arrays)
        if len(set(vocabulary)) != len(vocabulary) or postings.indptr[-1] != nnz:
            raise ValueError(f"{layout_path} does not match {arrays_path}")
        return postings


def _save_arrays(
    layout_path: Path, arrays_path: Path, layout: dict, arrays: Sequence[np.ndarray], dtypes: Sequence[np.dtype]
) -> None:
    """A JSON layout, and the arrays written raw one after another, each in its fixed dtype."""
    layout_path.write_text(json.dumps(layout, ensure_ascii=False), encoding="utf-8")
    with arrays_path.open("wb") as fh:
        for array, dtype in zip(arrays, dtypes):
            fh.write(np.ascontiguousarray(array, dtype=dtype).data)


def _load_arrays(
    layout_path: Path,
    arrays_path: Path,
    version: int,
    dtypes: Sequence[np.dtype],
    counts: Callable[[list[str], int, int], tuple[int, ...]],
) -> tuple[dict, list[np.ndarray]]:
    """The layout written by `_save_arrays` (of format `version`) and its arrays, memory-mapped
    read-only: views, no copy, no read. `counts(vocabulary, n_docs, nnz)` gives each array's length;
    the file must hold exactly those."""
    layout = json.loads(layout_path.read_text(encoding="utf-8"))
    if layout.get("format") != version:
        raise ValueError(f"{layout_path} has BM25 format {layout.get('format')}, not {version}")
    lengths = counts(layout["vocabulary"], int(layout["n_docs"]), int(layout["nnz"]))
    expected = sum(n * dtype.itemsize for n, dtype in zip(lengths, dtypes))
    raw = np.memmap(arrays_path, dtype=np.uint8, mode="r") if expected else np.zeros(0, np.uint8)
    if raw.size != expected:
        raise ValueError(f"{arrays_path} holds {raw.size} bytes; its layout in {layout_path} needs {expected}")
    arrays, offset = [], 0
    for n, dtype in zip(lengths, dtypes):
        arrays.append(np.frombuffer(raw, dtype=dtype, count=n, offset=offset))
        offset += n * dtype.itemsize
    return layout, arrays


class SegmentedBM25(BM25):
    """BM25 over the live documents of several segments, with the collection's df and average length.

    Rows are global: each segment's live documents in order, segment after segment (`live` masks
    say which of a segment's documents count). Each segment's weights are computed here, once, by
    the same float32 arithmetic as BM25's, so one segment with no deletions scores bit for bit as
    BM25 over its terms, and several segments as BM25 over their live documents concatenated.
    A term that only deleted documents hold is not in the vocabulary, as in a merged index.
    """

    def __init__(self, parts: Sequence[tuple[Postings, np.ndarray | None]], k1: float = 1.2, b: float = 0.75) -> None:
        live_masks = [None if live is None or live.all() else np.asarray(live, bool) for _, live in parts]
        # Live document frequency of each segment column, and the global vocabulary in first-seen order.
        vocabulary: dict[str, int] = {}
        seg_df, seg_cols, seg_keep = [], [], []
        for (postings, _), live in zip(parts, live_masks):
            counts = np.diff(postings.indptr)
            keep = None
            if live is not None:
                keep = live[postings.indices]
                # Every column of a segment holds at least one posting, so no reduceat range is empty.
                starts = postings.indptr[:-1]
                counts = np.add.reduceat(keep.astype(np.int64), starts) if len(starts) else counts
            seg_df.append(counts)
            seg_keep.append(keep)
            mapped = np.full(len(postings.vocabulary), -1, dtype=np.int64)
            for col in np.flatnonzero(counts):
                mapped[col] = vocabulary.setdefault(postings.vocabulary[col], len(vocabulary))
            seg_cols.append(mapped)
        df = np.zeros(len(vocabulary), dtype=np.float32)
        for counts, mapped in zip(seg_df, seg_cols):
            present = mapped >= 0
            np.add.at(df, mapped[present], counts[present].astype(np.float32))
        lengths = [p.lengths if live is None else p.lengths[live] for (p, _), live in zip(parts, live_masks)]
        all_lengths = np.concatenate(lengths) if lengths else np.zeros(0, np.float32)
        n_docs = len(all_lengths)
        self.vocabulary = vocabulary
        self.idf = np.log1p((max(n_docs, 1) - df + 0.5) / (df + 0.5)).astype(np.float32)
        avg = float(all_lengths.mean()) if n_docs else 1.0
        self.n_docs = n_docs
        # Per segment: global row offset, its live documents' rank (None: all live), the column of
        # each global term in it (-1: absent), and its weights in CSC order, deleted rows dropped.
        self._parts = []
        offset = 0
        for (postings, _), live, keep, counts, mapped, seg_lengths in zip(
            parts, live_masks, seg_keep, seg_df, seg_cols, lengths
        ):
            norm = k1 * (1 - b + b * postings.lengths / max(avg, 1e-9))
            rows, tf = postings.indices, postings.tf
            if keep is not None:
                rows, tf = rows[keep], tf[keep]
            # Each posting's idf, column by column (a column only deleted rows hold has none left).
            idf = np.repeat(np.where(mapped >= 0, self.idf[np.maximum(mapped, 0)], 0).astype(np.float32), counts)
            weights = tf * (k1 + 1) / (tf + norm[rows]) * idf
            indptr = np.concatenate([[0], np.cumsum(counts)])
            if live is not None:
                rows = (np.cumsum(live) - 1)[rows].astype(np.int32)
            local_of_global = np.full(len(vocabulary), -1, dtype=np.int64)
            local_of_global[mapped[mapped >= 0]] = np.flatnonzero(mapped >= 0)
            self._parts.append((offset, len(seg_lengths), local_of_global, indptr, rows, weights.astype(np.float32)))
            offset += len(seg_lengths)

    def scores(self, terms: Sequence[str], weights: Sequence[float] | None = None) -> np.ndarray:
        out = np.zeros(self.n_docs, dtype=np.float32)
        weights = weights if weights is not None else [1.0] * len(terms)
        for term, weight in zip(terms, weights):
            col = self.vocabulary.get(term)
            if col is None:
                continue
            for offset, n, local_of_global, indptr, rows, data in self._parts:
                local = local_of_global[col]
                if local < 0:
                    continue
                start, end = indptr[local], indptr[local + 1]
                out[offset : offset + n][rows[start:end]] += weight * data[start:end]
        return out

    def rows_with(self, term: str) -> np.ndarray:
        col = self.vocabulary.get(term)
        found = []
        for offset, _, local_of_global, indptr, rows, _ in self._parts if col is not None else ():
            local = local_of_global[col]
            if local >= 0:
                found.append(rows[indptr[local] : indptr[local + 1]].astype(np.int64) + offset)
        return np.concatenate(found) if found else np.zeros(0, np.int64)
