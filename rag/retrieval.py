"""Hybrid retrieval: dense chunk and sentence vectors plus BM25, fused by reciprocal rank.

Four ranked lists are fused with RRF (score = sum of weight / (k + rank)): chunk vectors find
passages about the question's topic, sentence vectors find the one sentence that carries a fact
(a chunk-level vector dilutes it), BM25 finds exact names and numbers, and BM25 over the query's
translation (rag.crosslingual) finds passages in the other language. RRF needs no score
calibration between them. Trade-off: a chunk found by one list only ranks below one that two
lists agree on, even when that one list was sure.

The first few fused passages, and the translated list's first passage wherever fusion put it,
are the candidates; rag.judge then reads their sentences and reorders them by the best one.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from rag.chunking import Chunk
from rag.crosslingual import flatten_translations, own_coverage, translations
from rag.documents import is_chinese, normalize
from rag.embeddings import Embedder
from rag.indexing import Index
from rag.lexical import tokenize

# The question is embedded on a second thread while this one ranks its words: the encoder spends
# most of its time in BLAS products, which release the GIL, so on two cores the lexical lists come free.
_ENCODER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rag-query-encoder")


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    row: int  # position of the chunk in Index.chunks
    score: float  # fused RRF score: the candidates' order before rag.judge reorders them
    dense: float  # best cosine of the query with the chunk or one of its sentences
    lexical: float  # BM25 score (0 when the chunk shares no term with the query)


@dataclass(frozen=True)
class Retrieval:
    query: str
    query_vector: np.ndarray
    query_terms: list[str]
    hits: list[Hit]
    # Other-language terms for the query (pinyin, dictionary translations) -> weight in (0, 1].
    translated_terms: dict[str, float] = field(default_factory=dict)
    # The same by source word: {query word: {translation: weight}} (rag.crosslingual.translations).
    translation_groups: dict[str, dict[str, float]] = field(default_factory=dict)
    # How many of the first hits are candidates for rag.judge; the rest only deepen the evaluation.
    judged: int | None = None


@dataclass(frozen=True)
class FusionWeights:
    chunks: float = 1.0
    sentences: float = 1.0
    lexical: float = 1.0
    # At its full weight only when no passage holds the question's own words (see retrieve).
    translated: float = 4.0


def reciprocal_rank_fusion(rankings: list[list[int]], weights: list[float], k: int = 60) -> list[tuple[int, float]]:
    """Fuse ranked lists of ids into one (id, score) list, best first, ties by first appearance."""
    scores: dict[int, float] = {}
    for ranking, weight in zip(rankings, weights):
        for rank, item in enumerate(ranking):
            scores[item] = scores.get(item, 0.0) + weight / (k + rank + 1)
    return sorted(scores.items(), key=lambda pair: -pair[1])


def retrieve(
    index: Index,
    embedder: Embedder,
    question: str,
    passages: int = 8,
    candidates: int = 40,
    rrf_k: int = 60,
    weights: FusionWeights = FusionWeights(),
    depth: int = 0,
    meanwhile: Callable[[str], object] | None = None,
) -> Retrieval:
    """The `passages` best fused passages, plus the translated list's first wherever fusion put it,
    then (for evaluation) further fused passages up to `depth` in all.

    The first ones are candidates (`Retrieval.judged` of them): rag.judge reads their sentences
    and reorders them before any is shown. `meanwhile(query)` (the normalized question, as
    `Retrieval.query` holds it) is called on this thread once the word lists are ranked, while the
    question is still being embedded on the other one.
    """
    query = normalize(question)
    embedding = _ENCODER.submit(embedder.embed_queries, [query])
    terms = tokenize(query)
    if not index.chunks:
        return Retrieval(query, embedding.result()[0], terms, [])

    lexical_rows, lexical_scores = index.bm25.top(terms, candidates)
    lexical_of = dict(zip(lexical_rows.tolist(), lexical_scores.tolist()))

    # The query in the other language, ranking only the other language's passages; it counts more
    # the less of the question any passage explains in the question's own words.
    gate = 1.0 - own_coverage(index.bm25, terms)
    groups = translations(query, index.bm25.vocabulary)
    translated = {t: w * gate for t, w in flatten_translations(groups).items()}
    translated_rows, _ = index.bm25.top(list(translated), candidates * 4, list(translated.values()))
    other_language = index.chinese_rows[translated_rows] != is_chinese(query)
    translated_rows = translated_rows[other_language][:candidates]

    if meanwhile is not None:
        meanwhile(query)
    query_vector = embedding.result()[0]
    dense_best: dict[int, float] = {}
    scores, ids = index.chunk_vectors.search(query_vector, candidates)
    chunk_ranking = []
    for score, id_ in zip(scores[0], ids[0]):
        row = index.row_of_id.get(int(id_))
        if row is not None:
            chunk_ranking.append(row)
            dense_best[row] = max(dense_best.get(row, -1.0), float(score))

    scores, ids = index.sentence_vectors.search(query_vector, candidates * 2)
    sentence_ranking: list[int] = []
    for score, id_ in zip(scores[0], ids[0]):
        for row in index.chunk_rows_of_sentence.get(int(id_), []):
            dense_best[row] = max(dense_best.get(row, -1.0), float(score))
            if row not in sentence_ranking:
                sentence_ranking.append(row)
    sentence_ranking = sentence_ranking[:candidates]

    fused = reciprocal_rank_fusion(
        [chunk_ranking, sentence_ranking, lexical_rows.tolist(), translated_rows.tolist()],
        [weights.chunks, weights.sentences, weights.lexical, weights.translated * gate],
        rrf_k,
    )
    rows = [row for row, _ in fused[:passages]]
    # The translated list is the only one that finds an other-language passage by its words, and
    # fusion ranks a passage that one list found below those several lists agree on: its first
    # passage joins the candidates, so its sentences, not its fused rank, decide.
    if passages and len(translated_rows) and int(translated_rows[0]) not in rows:
        rows.append(int(translated_rows[0]))
    judged = len(rows)
    rows += [row for row, _ in fused[passages:] if row not in rows][: max(0, depth - judged)]
    fused_score = dict(fused)
    hits = [
        Hit(
            chunk=index.chunks[row],
            row=row,
            score=fused_score[row],
            dense=dense_best.get(row, 0.0),
            lexical=lexical_of.get(row, 0.0),
        )
        for row in rows
    ]
    return Retrieval(query, query_vector, terms, hits, translated, groups, judged)
