"""Hybrid retrieval: dense chunk and sentence vectors plus BM25, fused by reciprocal rank.

Four ranked lists are fused with RRF (score = sum of weight / (k + rank)): chunk vectors find
passages about the question's topic, sentence vectors find the one sentence that carries a fact
(a chunk-level vector dilutes it), BM25 finds exact names and numbers, and BM25 over the query's
translation (rag.crosslingual) finds passages in the other language. RRF needs no score
calibration between them. Trade-off: a chunk found by one list only ranks below one that two
lists agree on, even when that one list was sure.

The first few fused passages, and the translated list's first passage wherever fusion put it,
are then reordered by their best sentence (score_sentences: cosine lifted across languages, the
share of the question's words held in either language, a number when one is asked for, more so
next to one of the question's words), which is also how rag.answer picks the sentences it
quotes. Trade-off: the sentences of those passages are scored twice, once here and once for the
answer.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from rag.chunking import Chunk
from rag.crosslingual import QueryWords, document_terms, flatten_translations, own_coverage, stem, translations
from rag.documents import is_chinese, normalize
from rag.embeddings import Embedder
from rag.indexing import Index, sentence_key
from rag.lexical import tokenize
from rag.rerank import SentenceJudge


@dataclass(frozen=True)
class Hit:
    chunk: Chunk
    row: int  # position of the chunk in Index.chunks
    score: float  # fused RRF score: what the ranking uses (then rerank_by_sentences reorders the head)
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


@dataclass(frozen=True)
class FusionWeights:
    chunks: float = 1.0
    sentences: float = 1.0
    lexical: float = 1.0
    # At its full weight only when no passage holds the question's own words (see retrieve).
    translated: float = 4.0


# A sentence's score: its cosine with the question, plus these (calibrated on the non-heldout
# questions of eval/qa.jsonl with `rag eval`; heldout figures reported apart).
# e5-small's cosines across languages run about 0.08 below those within a language (the mean
# over all candidate sentences of the eval's questions), so other-language sentences get it back.
CROSS_LINGUAL_OFFSET = 0.08
COVERAGE_WEIGHT = 0.2  # share of the question's content words the sentence holds, any language
TRANSLATED_WEIGHT = 0.5  # share of the query's term weight met through translations and pinyin
ANSWER_TYPE_WEIGHT = 0.06  # the question asks for a number and the sentence gives one
# A quote after the first also scores this times the share of the question's words (IDF-weighted)
# that it holds and the quotes before it do not: a two-part question gets a quote for each part.
NOVELTY_WEIGHT = 0.15
# When a number is asked for and one of the question's words stands next to a number the question
# does not hold ("江苏127项" for "how many ... from Jiangsu"): that number likely answers it.
NEAR_NUMBER_WEIGHT = 0.06
# The cross-lingual sentence judge (rag.rerank) moves each of the best few sentences by this times
# how much closer to the question it finds that sentence than the average of them.
JUDGE_WEIGHT = 0.3
_NEAR = {True: 8, False: 40}  # characters between word and number: Chinese text, other text
# "How many", "what share", 多少, 几项 ...: the answer is a number.
_ASKS_FOR_NUMBER = re.compile(
    r"\bhow (?:many|much|long|far|old|large|big)\b|\bwhat (?:share|proportion|percentage|number|amount|rate|score)\b"
    r"|\bnumber of\b|多少|几[个项年位座条张次名家所]|比例|占比|百分之|多大|多长|多高",
    re.IGNORECASE,
)
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


@dataclass(frozen=True)
class ScoredSentence:
    hit_rank: int
    hit: Hit
    start: int  # offsets into the document
    end: int
    text: str
    score: float
    words: frozenset[str] = frozenset()  # the question's content words it holds (QueryWords.found)
    judged: float = 0.0  # what the sentence judge added to (or took from) its score; see judge_sentences


def pick_sentences(ranked: Sequence[ScoredSentence], weights: dict[str, float], n: int) -> list[ScoredSentence]:
    """The best sentence, then greedily those that score best plus NOVELTY_WEIGHT x the share of
    the question's words (`weights`: QueryWords.weights) they add to the ones already picked."""
    total = sum(weights.values()) or 1.0
    chosen: list[ScoredSentence] = []
    covered: set[str] = set()
    rest = list(ranked)
    while rest and len(chosen) < n:
        best = max(
            rest, key=lambda s: s.score + NOVELTY_WEIGHT * sum(weights.get(w, 0.0) for w in s.words - covered) / total
        )
        chosen.append(best)
        covered |= best.words
        rest.remove(best)
    return chosen


def number_near_words(text: str, question: str, words: QueryWords) -> bool:
    """True when one of the question's words occurs within a few characters of a number it does not hold."""
    asked = set(_NUMBER.findall(question))
    numbers = [m.start() for m in _NUMBER.finditer(text) if m.group() not in asked]
    if not numbers:
        return False
    window = _NEAR[is_chinese(text)]
    return any(abs(at - n) <= window for offsets in words.positions(text).values() for at in offsets for n in numbers)


def _term_weights(index: Index, terms: Sequence[str], translated: dict[str, float] | None = None) -> dict[str, float]:
    """IDF of each query term; other-language terms count at their translation weight."""
    weights = {t: index.bm25.idf_of(t) for t in dict.fromkeys(terms)}
    for term, weight in (translated or {}).items():
        weights.setdefault(term, weight * index.bm25.idf_of(term))
    return weights


def asks_for_number(question: str) -> bool:
    return bool(_ASKS_FOR_NUMBER.search(question))


def gives_new_number(text: str, question: str) -> bool:
    """True when `text` holds a number that `question` does not (the 2020 of "2020年" is not news)."""
    return bool(set(_NUMBER.findall(text)) - set(_NUMBER.findall(question)))


@functools.lru_cache(maxsize=16384)
def sentence_terms(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """A sentence's search terms (with pinyin and joined names, to meet translations) and stems.

    Cached: segmenting is most of the cost of scoring, and the same sentences come back within a
    question (reranking, then answering) and across questions.
    """
    terms = frozenset(document_terms(text))
    return terms, frozenset(stem(t) for t in terms if t.isascii() and t.isalpha())


def judge_sentences(
    ranked: Sequence[ScoredSentence], question: str, judge: SentenceJudge, n: int
) -> list[ScoredSentence]:
    """`ranked` with its first `n` rescored by `judge`, best first.

    Each of them gains JUDGE_WEIGHT x (its similarity to the question - their mean similarity):
    the judge reorders them but, on average, leaves their scores where they were, so they stay
    comparable with the sentences it did not see.
    """
    head = list(ranked[:n])
    if not head:
        return list(ranked)
    similarity = judge.similarities(question, [s.text for s in head])
    shifts = JUDGE_WEIGHT * (similarity - similarity.mean())
    head = [replace(s, score=s.score + float(d), judged=float(d)) for s, d in zip(head, shifts)]
    return sorted(head + list(ranked[n:]), key=lambda s: -s.score)


def score_sentences(
    index: Index, retrieval: Retrieval, judge: SentenceJudge | None = None, judged: int = 0
) -> list[ScoredSentence]:
    """Every sentence of the retrieved passages with its score for the question, best first.

    With a `judge`, the best `judged` of them are then reordered by it (judge_sentences).
    """
    weights = _term_weights(index, retrieval.query_terms, retrieval.translated_terms)
    total_weight = sum(weights.values()) or 1.0
    own_terms = set(retrieval.query_terms)
    words = QueryWords.of(retrieval.query, index.bm25, retrieval.translation_groups)
    chinese_query = is_chinese(retrieval.query)
    wants_number = asks_for_number(retrieval.query)
    candidates: dict[tuple[str, int, int], ScoredSentence] = {}
    keys, spans = [], []
    for rank, hit in enumerate(retrieval.hits):
        chunk = hit.chunk
        for s in chunk.sentences:
            text = chunk.text[s.start - chunk.start : s.end - chunk.start]
            keys.append(sentence_key(chunk.doc_id, text))
            spans.append((rank, hit, s.start, s.end, text))
    if not keys:
        return []
    cosines = index.sentence_vectors.get(np.array(keys, dtype=np.int64)) @ retrieval.query_vector
    for (rank, hit, start, end, text), cosine in zip(spans, cosines):
        key = (hit.chunk.doc_id, start, end)
        if key in candidates:  # the same sentence in an overlapping chunk: keep the better rank
            continue
        normalized = normalize(text)
        present, stems = sentence_terms(normalized)
        translated = sum(w for t, w in weights.items() if t in present and t not in own_terms) / total_weight
        found = words.found(present, stems)
        score = float(cosine) + COVERAGE_WEIGHT * words.share(found) + TRANSLATED_WEIGHT * translated
        if is_chinese(text) != chinese_query:
            score += CROSS_LINGUAL_OFFSET
        if wants_number and gives_new_number(normalized, retrieval.query):
            score += ANSWER_TYPE_WEIGHT
            if number_near_words(normalized, retrieval.query, words):
                score += NEAR_NUMBER_WEIGHT
        candidates[key] = ScoredSentence(rank, hit, start, end, text, score, frozenset(found))
    ranked = sorted(candidates.values(), key=lambda s: -s.score)
    if judge is not None and judged > 0:
        ranked = judge_sentences(ranked, retrieval.query, judge, judged)
    return ranked


def rerank_by_sentences(
    index: Index, retrieval: Retrieval, depth: int, judge: SentenceJudge | None = None, judged: int = 0
) -> Retrieval:
    """The first `depth` hits reordered by their best sentence's score (see score_sentences).

    Fusion ranks a passage by how much of it is about the question; this asks whether one of
    its sentences answers it, which counts most when the answer is in the other language.
    """
    head = replace(retrieval, hits=retrieval.hits[:depth])
    best: dict[int, float] = {}
    for sentence in score_sentences(index, head, judge, judged):
        best.setdefault(sentence.hit_rank, sentence.score)
    order = sorted(range(len(head.hits)), key=lambda rank: -best.get(rank, float("-inf")))
    return replace(retrieval, hits=[head.hits[rank] for rank in order] + retrieval.hits[depth:])


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
    top_k: int = 5,
    candidates: int = 40,
    rrf_k: int = 60,
    weights: FusionWeights = FusionWeights(),
    rerank_depth: int = 8,
    judge: SentenceJudge | None = None,
    judged: int = 0,
) -> Retrieval:
    query = normalize(question)
    query_vector = embedder.embed_queries([query])[0]
    terms = tokenize(query)
    if not index.chunks:
        return Retrieval(query, query_vector, terms, [])

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

    fused = reciprocal_rank_fusion(
        [chunk_ranking, sentence_ranking, lexical_rows.tolist(), translated_rows.tolist()],
        [weights.chunks, weights.sentences, weights.lexical, weights.translated * gate],
        rrf_k,
    )
    rows = [row for row, _ in fused[: max(top_k, rerank_depth)]]
    depth = rerank_depth
    # The translated list is the only one that finds an other-language passage by its words, and
    # fusion ranks a passage that one list found below those several lists agree on: its first
    # passage joins the reranked head, so its sentences, not its fused rank, decide.
    if rerank_depth and len(translated_rows) and int(translated_rows[0]) not in rows[:rerank_depth]:
        first = int(translated_rows[0])
        rows = [row for row in rows if row != first]
        rows.insert(rerank_depth, first)
        depth += 1
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
    retrieval = rerank_by_sentences(
        index, Retrieval(query, query_vector, terms, hits, translated, groups), depth, judge, judged
    )
    return replace(retrieval, hits=retrieval.hits[:top_k])
