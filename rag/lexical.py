"""Lexical search: BM25 over terms from a tokenizer that handles Chinese and English.

Chinese runs are segmented with jieba (search mode, so both 长三角 and 三角 match); Latin words
are lower-cased; numbers, dates and alphanumeric codes (585, 2023, G60, 5G, 1.2) stay whole.
English terms are not stemmed (exact word forms; see the README's eval notes). The matrix is
rebuilt from stored terms at load time, which is fast for document collections and keeps
refresh trivially incremental, at the cost of memory for very large corpora.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Sequence

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

        jieba.setLogLevel(logging.WARNING)
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
        self._weights = sparse.csc_matrix((weights, (tf.row, tf.col)), shape=tf.shape)
        self.n_docs = len(docs)

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
            start, end = self._weights.indptr[col], self._weights.indptr[col + 1]
            out[self._weights.indices[start:end]] += weight * self._weights.data[start:end]
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
        return self._weights.indices[self._weights.indptr[col] : self._weights.indptr[col + 1]]

    def idf_of(self, term: str) -> float:
        col = self.vocabulary.get(term)
        return float(self.idf[col]) if col is not None else math.log1p(self.n_docs + 0.5)
