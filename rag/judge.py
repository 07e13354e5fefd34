"""The answer judge: P(this sentence answers the question), one fitted logistic model.

Every sentence of the retrieved passages is described by a few features that are cheap to compute
(its e5 cosine with the question, the share of the question's content words it holds, with its
neighbours and anywhere in its document, in either language; whether the question asks for a
number, date or name and the sentence gives one the question does not; whether it says anything
the question does not; header and byline cues ...). A logistic model fitted by `python -m
rag.train_judge` turns them into a probability; its weights, the feature scaling and the two
thresholds calibrated on held-out article folds (abstain below one, quote a further sentence only
above the other) live in `rag/judge.json`, never in code. The sentences the first model likes best
are then read a second time with the Universal Sentence Encoder's cross-lingual similarity
(rag.rerank), by a second model fitted the same way. Trade-off: a linear model over word-level
features cannot read a paraphrase the way a cross-encoder would; it is small, fast, and refits in
a minute on new data.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from rag.crosslingual import QUESTION_WORDS, QueryWords, document_terms, stem
from rag.documents import is_chinese, normalize
from rag.indexing import Index, normalized_sentence_key
from rag.lexical import STOPWORDS
from rag.rerank import SentenceJudge

MODEL_PATH = Path(__file__).with_name("judge.json")

# What a question asks for. These define features (the fitted weights say how much each counts).
_ASKS_FOR_NUMBER = re.compile(
    r"\bhow (?:many|much|long|far|old|large|big|tall|high|deep|wide)\b"
    r"|\bwhat (?:share|proportion|percentage|percent|number|amount|rate|score|size|population|length)\b"
    r"|\bnumber of\b|多少|几[个项年位座条张次名家所种人岁天月场倍]|比例|占比|百分之|多大|多长|多高|多远|多久|多深|多重",
    re.IGNORECASE,
)
_ASKS_FOR_DATE = re.compile(
    r"\bwhen\b|\b(?:what|which) (?:year|date|day|month|century|decade|time|period|era)\b|\bin what year\b"
    r"|\bhow long ago\b|哪一?年|何时|什么时候|哪一?天|日期|几月|哪个月|年代|哪个世纪|什么时间|哪段时间",
    re.IGNORECASE,
)
_ASKS_FOR_NAME = re.compile(
    r"\bwho\b|\bwhom\b|\bwhose\b|\bwhere\b|\bwhat (?:is|was|were|are) the name\b|\bwhat (?:city|country|place|state|"
    r"region|location|town|company|team|organization|university|river|language)\b|\bwhich (?:city|country|place|"
    r"state|region|town|company|team|organization|university|river|language|person|player|king|emperor)\b"
    r"|谁|哪位|什么人|名字|叫什么|哪里|哪儿|在哪|何处|哪个(?:城市|国家|地方|州|省|公司|球队|组织|大学|人)|什么地方",
    re.IGNORECASE,
)
_ASKS_FOR_SOURCE = re.compile(
    r"\bsource\b|\bpublished\b|\breport(?:ed|er)\b|来源|出处|发布|作者|记者|编辑", re.IGNORECASE
)

# What a sentence gives.
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_NUMBER_WORD = re.compile(
    r"\b(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|forty|fifty|hundred|"
    r"thousand|million|billion|dozen|half)\b|[一二两三四五六七八九十百千万亿]+(?:[个名位项次年岁倍]|分之)",
    re.IGNORECASE,
)
_DATE = re.compile(
    r"\b(?:1[0-9]{3}|20[0-9]{2})s?\b|\b(?:january|february|march|april|may|june|july|august|september|october|"
    r"november|december)\b|\b\d{1,2}(?:st|nd|rd|th) century\b|\d+\s*(?:年|月|日|世纪)",
    re.IGNORECASE,
)
_MONTH = r"(?:January|February|March|April|May|June|July|August|September|October|November|December)"
# A whole date, longest form first, for the lead answer: "7 January 1943", "1943年1月7日", "1943".
_FULL_DATE = re.compile(
    rf"\d{{1,2}} {_MONTH},? \d{{4}}|{_MONTH} \d{{1,2}},? \d{{4}}|{_MONTH} \d{{4}}|{_MONTH} \d{{1,2}}\b"
    r"|\d{4}\s*年\s*\d{1,2}\s*月(?:\s*\d{1,2}\s*日)?|\d{1,2}\s*月\s*\d{1,2}\s*日|\d{4}\s*年"
    r"|\b\d{1,2}(?:st|nd|rd|th) century\b|\d{1,2}\s*世纪|\b1\d{3}s?\b|\b20\d{2}s?\b"
)
# A number with what it counts, for the lead answer: "585", "6½", "1.2 million", "27 分". The lead is
# read from the text as written, so Traditional 萬 and 億 too.
_LEAD_NUMBER = re.compile(r"\d+(?:[.,]\d+)*½?(?:\s*(?:million|billion|thousand|万|亿|萬|億|%|％))?")
_CAPITALISED = re.compile(r"\b[A-Z][a-zà-ÿ]+(?:[ -][A-Z][a-zà-ÿ]+)*")
_CHINESE_NAME = re.compile(r"[\u3400-\u9fff]+[·•・][\u3400-\u9fff]+|《[^》]+》")
# Header and byline lines: "发布时间:2023-06-07 16:36:13 来源:...", "Updated on 2024-01-29", "(Reporter ...)".
_HEADER = re.compile(
    r"(?:发布时间|发布日期|来源|作者|责任编辑|编辑|记者|浏览|点击|当前位置|时间)\s*[:：>]"
    r"|\b(?:updated|published|posted|source|reporter|editor)\b(?: on)?\s*[:：]?\s*\(?\d{0,4}"
    r"|^\W*\d{4}[-/.年]\d{1,2}[-/.月]\d{1,2}日?\W*(?:\d{1,2}:\d{2}(?::\d{2})?)?\W*$",
    re.IGNORECASE,
)
# A sentence that names its subject only by a pronoun or "the ...": its previous sentence says who.
_ANAPHOR = re.compile(
    r"^(?:it|he|she|they|his|her|its|their|this|these|that|those|the|such)\b|^(?:他|她|它|其|该|这|此|那)", re.I
)
_STATEMENT_END = re.compile(r"[.!?;。！？；…][\"'”’)）\]]*\s*$")
_LIST_ITEM = re.compile(r"^\s*(?:[•·▪■►◆●○\-*]|\d+[.)、])\s*")
_NOT_NAMES = STOPWORDS | QUESTION_WORDS | {"however", "although", "while", "since", "because", "if", "after", "despite"}
_WORD = re.compile(r"[\u3400-\u9fff]|[A-Za-z]+|\d+")

FIRST_STAGE = (
    "e5_cosine",
    "e5_cosine_gap",
    "e5_rank",
    "neighbour_cosine",
    "bigram_overlap",
    "token_overlap",
    "coverage",
    "coverage_gap",
    "coverage_with_neighbours",
    "whole_coverage",
    "coverage_in_document",
    "local_coverage",
    "local_coverage_gap",
    "local_coverage_with_previous",
    "local_missing_word",
    "previous_coverage",
    "anaphor",
    "translated_share",
    "missing_word",
    "other_language",
    "passage_rank",
    "passage_bm25",
    "unknown_share",
    "asks_number",
    "gives_number",
    "number_near_words",
    "asks_date",
    "gives_date",
    "asks_name",
    "gives_name",
    "new_words",
    "header",
    "header_not_asked",
    "statement",
    "list_item",
    "log_length",
)
SECOND_STAGE = (*FIRST_STAGE, "use_similarity", "use_gap")
# The question as a whole: does any sentence answer it? Read off the judged list (see answerable_features).
ANSWERABLE = (
    "top_share",
    "second_share",
    "top_score",
    "top_margin",
    "top_missing_word",
    "top_coverage",
    "top_coverage_with_neighbours",
    "top_whole_coverage",
    "top_coverage_in_document",
    "top_local_coverage",
    "top_local_missing_word",
    "best_coverage_in_document",
    "unknown_share",
    "top_e5_cosine",
    "top_gives_type",
    "asks_type",
)


@dataclass(frozen=True)
class Candidate:
    """A sentence of a retrieved passage, with what the judge made of it."""

    hit_rank: int
    hit: object  # rag.retrieval.Hit (not imported: retrieval sits below the judge)
    start: int  # offsets into the document
    end: int
    text: str
    probability: float = 0.0
    words: frozenset[str] = frozenset()  # the question's content words it holds
    header: bool = False
    features: dict[str, float] = field(default_factory=dict, compare=False, repr=False)

    def with_probability(self, probability: float) -> Candidate:
        # What `dataclasses.replace` does, at a tenth of its cost: the judge makes ~35 a question.
        c = self
        return Candidate(c.hit_rank, c.hit, c.start, c.end, c.text, probability, c.words, c.header, c.features)


@dataclass(frozen=True)
class QuestionKind:
    number: bool
    date: bool
    name: bool
    source: bool

    @classmethod
    def of(cls, question: str) -> QuestionKind:
        return cls(
            bool(_ASKS_FOR_NUMBER.search(question)),
            bool(_ASKS_FOR_DATE.search(question)),
            bool(_ASKS_FOR_NAME.search(question)),
            bool(_ASKS_FOR_SOURCE.search(question)),
        )


def asks_for_number(question: str) -> bool:
    return bool(_ASKS_FOR_NUMBER.search(question))


def is_header(text: str) -> bool:
    """A header, dateline or byline rather than a statement: "发布时间:2023-06-07 来源:..."."""
    return bool(_HEADER.search(normalize(text)))


def new_numbers(text: str, question: str) -> list[str]:
    """Numbers in `text` that the question does not hold (the 2020 of "2020年" asked about is not news)."""
    asked = set(_NUMBER.findall(normalize(question)))
    return [n for n in dict.fromkeys(_NUMBER.findall(text)) if n not in asked]


def new_names(text: str, question: str) -> list[str]:
    """Names in `text` (capitalised words, 名·名, 《titles》) that the question does not mention."""
    q = normalize(question).lower()
    return [n for n in _names(text) if _is_new_name(n, q)]


def _is_new_name(name: str, question_lower: str) -> bool:
    # "The", "In", "However" open sentences with a capital too.
    return name.lower() not in question_lower and name.lower() not in _NOT_NAMES


def _names(text: str) -> tuple[str, ...]:
    names = [m.group() for m in _CAPITALISED.finditer(text)] + [m.group() for m in _CHINESE_NAME.finditer(text)]
    return tuple(dict.fromkeys(names))


def lead_value(text: str, question: str) -> str | None:
    """The one date, number or name in `text` that answers what `question` asks for, if exactly one.

    None when the question asks for none of these, or the sentence holds several new ones (then
    which one answers is not clear from the types alone).
    """
    kind = QuestionKind.of(question)
    q = normalize(question)
    if kind.date:
        found = [m.group() for m in _FULL_DATE.finditer(text) if m.group() not in q]
    elif kind.number:
        asked = set(_NUMBER.findall(q))
        dates = [m.span() for m in _FULL_DATE.finditer(text)]  # "6月6日" is when, not how many
        found = [
            m.group()
            for m in _LEAD_NUMBER.finditer(text)
            if _NUMBER.match(m.group()).group() not in asked and not any(a <= m.start() < b for a, b in dates)
        ]
    elif kind.name:
        found = new_names(text, question)
    else:
        return None
    found = list(dict.fromkeys(found))
    return found[0].strip() if len(found) == 1 else None


@functools.lru_cache(maxsize=16384)
def sentence_terms(text: str) -> tuple[frozenset[str], frozenset[str]]:
    """A sentence's search terms (with pinyin and joined names, to meet translations) and stems.

    Cached: segmenting is most of the cost of judging, and the same sentences come back across
    questions on the same documents.
    """
    terms = frozenset(document_terms(text))
    return terms, frozenset(stem(t) for t in terms if t.isascii() and t.isalpha())


@dataclass(frozen=True)
class _Sentence:
    """What the judge reads from a sentence whatever the question asks (see `_sentence`)."""

    normalized: str
    terms: frozenset[str]
    stems: frozenset[str]
    token_set: frozenset[str]
    bigrams: frozenset[tuple[str, str]]
    raw_words: tuple[str, ...]  # words of the normalized text, lower-cased: what `new_words` counts
    word_counts: dict[str, int]  # the same, counted
    numbers: tuple[str, ...]  # its numbers, each once (see `new_numbers`)
    names: tuple[str, ...]  # its names, each once (see `new_names`)
    dates: tuple[str, ...]
    chinese: bool
    number_word: bool
    header: bool
    anaphor: bool
    statement: bool
    list_item: bool


@functools.lru_cache(maxsize=16384)
def _sentence(text: str) -> _Sentence:
    """Cached like `sentence_terms`: the same sentences come back across questions, and as each
    other's neighbours within one."""
    normalized = normalize(text)
    tokens = _tokens(normalized)
    terms, stems = sentence_terms(normalized)
    raw_words = tuple(w.lower() for w in _WORD.findall(normalized))
    return _Sentence(
        normalized=normalized,
        terms=terms,
        stems=stems,
        token_set=frozenset(tokens),
        bigrams=frozenset(zip(tokens, tokens[1:])),
        raw_words=raw_words,
        word_counts=Counter(raw_words),
        numbers=tuple(dict.fromkeys(_NUMBER.findall(normalized))),
        names=_names(text),
        dates=tuple(m.group().lower() for m in _DATE.finditer(normalized)),
        chinese=is_chinese(text),
        number_word=bool(_NUMBER_WORD.search(text)),
        header=is_header(text),
        anaphor=bool(_ANAPHOR.match(normalized)),
        statement=bool(_STATEMENT_END.search(normalized)),
        list_item=bool(_LIST_ITEM.match(normalized)),
    )


@dataclass
class _DocumentTerms:
    """Each document's chunk rows (one pass over the index, when first needed) and its terms, by document."""

    rows: dict[str, list[int]]
    terms: dict[str, tuple[frozenset[str], frozenset[str]]] = field(default_factory=dict)


# For the last few indexes, by identity (an index is replaced, not changed).
_DOCUMENT_TERMS: list[tuple[Index, _DocumentTerms]] = []


def document_terms_of(index: Index, doc_id: str) -> tuple[frozenset[str], frozenset[str]]:
    """Every search term (and English stem) of a document: does it mention the word at all?"""
    cache = next((known for i, known in _DOCUMENT_TERMS if i is index), None)
    if cache is None:
        rows: dict[str, list[int]] = {}
        for row, chunk in enumerate(index.chunks):
            rows.setdefault(chunk.doc_id, []).append(row)
        cache = _DocumentTerms(rows)
        _DOCUMENT_TERMS.insert(0, (index, cache))
        del _DOCUMENT_TERMS[4:]
    if doc_id not in cache.terms:
        terms = frozenset(t for row in cache.rows.get(doc_id, ()) for t in index.terms[row])
        cache.terms[doc_id] = (terms, frozenset(stem(t) for t in terms if t.isascii() and t.isalpha()))
    return cache.terms[doc_id]


def number_near_words(text: str, question: str, words: QueryWords) -> bool:
    """True when one of the question's words occurs within a few characters of a number it does not hold."""
    asked = set(_NUMBER.findall(question))
    numbers = [m.start() for m in _NUMBER.finditer(text) if m.group() not in asked]
    if not numbers:
        return False
    window = 8 if is_chinese(text) else 40  # characters between word and number
    return any(abs(at - n) <= window for offsets in words.positions(text).values() for at in offsets for n in numbers)


def _tokens(text: str) -> list[str]:
    """Characters of Chinese, lower-cased words and numbers: what the overlap features compare."""
    return [w.lower() for w in _WORD.findall(normalize(text))]


class AnswerJudge:
    """The fitted models (rag/judge.json) and the thresholds calibrated with them.

    Two listwise models rank a question's candidate sentences (a softmax over them: which one
    answers, if one does); a logistic model over the ranking's outcome says whether one does. A
    sentence's probability is the product, so the probabilities of a question's candidates sum
    to P(some sentence answers).
    """

    def __init__(self, params: dict) -> None:
        self.params = params
        self.stages = {name: _Stage(stage) for name, stage in params["stages"].items()}
        self.abstain_threshold = float(params["abstain_threshold"])
        self.quote_threshold = float(params["quote_threshold"])

    @classmethod
    def load(cls, path: Path = MODEL_PATH) -> AnswerJudge:
        try:
            return cls(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError) as exc:
            raise RuntimeError(
                f"cannot read the answer judge's model {path}: {exc}. Refit it: python -m rag.train_judge"
            ) from exc

    def rank(
        self, rows: Sequence[dict[str, float]], use_top: int, read_again: Callable[[list[int]], bool] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each row's share of the ranking (a softmax over them) and its score.

        The first-stage model ranks every row; `read_again(head)` adds the second stage's features
        to the best `use_top` rows (returning False when it cannot), and the second-stage model
        re-ranks them, keeping the share of the ranking the first stage gave them.
        """
        z = self.stages["first"].scores(rows)
        shares = _softmax(z)
        head = [int(i) for i in np.argsort(-z, kind="stable")[:use_top]]
        if head and read_again is not None and read_again(head):
            second = self.stages["second"].scores([rows[i] for i in head])
            shares[head] = _softmax(second) * shares[head].sum()
            z[head] = second
        return shares, z

    def score(
        self, rows: Sequence[dict[str, float]], use_top: int, read_again: Callable[[list[int]], bool] | None = None
    ) -> tuple[np.ndarray, float]:
        """Each row's P(it answers), and P(one of them does): the ranking's shares (see `rank`)
        times the question-level model's verdict on it."""
        if not rows:
            return np.zeros(0), 0.0
        shares, z = self.rank(rows, use_top, read_again)
        question = answerable_features(rows, shares, z)
        answerable = float(_sigmoid(self.stages["answerable"].scores([question])[0]))
        return answerable * shares, answerable


class _Stage:
    def __init__(self, stage: dict) -> None:
        self.features: list[str] = stage["features"]
        self.mean = np.asarray(stage["mean"], dtype=np.float64)
        self.scale = np.asarray(stage["scale"], dtype=np.float64)
        self.coef = np.asarray(stage["coef"], dtype=np.float64)
        self.intercept = float(stage.get("intercept", 0.0))

    def scores(self, rows: Sequence[dict[str, float]]) -> np.ndarray:
        x = np.array([[row[f] for f in self.features] for row in rows], dtype=np.float64)
        return ((x - self.mean) / self.scale) @ self.coef + self.intercept


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@functools.lru_cache(maxsize=1)
def load_answer_judge() -> AnswerJudge:
    return AnswerJudge.load()


def clear_caches() -> None:
    """Forget every sentence's analysis and every document's words (benchmarks that compare
    configurations start each from the same state)."""
    _sentence.cache_clear()
    sentence_terms.cache_clear()
    _DOCUMENT_TERMS.clear()


def candidate_features(index: Index, retrieval, words: QueryWords | None = None) -> list[Candidate]:
    """Every sentence of `retrieval.hits` (a sentence shared by two overlapping passages once,
    with the better-ranked one) with its first-stage features; no probabilities yet."""
    query = retrieval.query
    words = words or QueryWords.of(query, index.bm25, retrieval.translation_groups)
    kind = QuestionKind.of(query)
    weights = {t: index.bm25.idf_of(t) for t in dict.fromkeys(retrieval.query_terms)}
    for term, weight in retrieval.translated_terms.items():
        weights.setdefault(term, weight * index.bm25.idf_of(term))
    total_weight = sum(weights.values()) or 1.0
    own_terms = set(retrieval.query_terms)
    total_idf = words.total or 1.0
    unknown = words.unknown_share(index.bm25)
    chinese_query = is_chinese(query)
    best_lexical = max((h.lexical for h in retrieval.hits[: retrieval.judged]), default=0.0) or 1.0

    spans, seen = [], set()
    for rank, hit in enumerate(retrieval.hits[: retrieval.judged]):
        chunk = hit.chunk
        texts = [chunk.text[s.start - chunk.start : s.end - chunk.start] for s in chunk.sentences]
        for i, s in enumerate(chunk.sentences):
            if (chunk.doc_id, s.start) in seen:
                continue
            seen.add((chunk.doc_id, s.start))
            # The previous sentence first: "It won the award in 2000" answers about what it names.
            neighbours = [texts[j] for j in (i - 1, i + 1) if 0 <= j < len(texts)]
            if i == 0:
                neighbours.insert(0, "")
            spans.append((rank, hit, s.start, s.end, texts[i], neighbours))
    if not spans:
        return []
    # A sentence comes back as its neighbours' neighbour: its key and the words it holds, once.
    keys: dict[tuple[str, str], int] = {}
    for _, hit, _, _, text, neighbours in spans:
        for t in (text, *neighbours):
            if t and (hit.chunk.doc_id, t) not in keys:
                keys[hit.chunk.doc_id, t] = normalized_sentence_key(hit.chunk.doc_id, _sentence(t).normalized)
    unique = list(dict.fromkeys(keys.values()))
    cosine_of = dict(zip(unique, index.sentence_vectors.get(np.array(unique, dtype=np.int64)) @ retrieval.query_vector))
    found_of: dict[str, set[str]] = {}
    in_document_of: dict[str, set[str]] = {}  # the question's words each document holds anywhere
    translated_weights = [(t, w) for t, w in weights.items() if t not in own_terms]

    def found_in(text: str) -> set[str]:
        if text not in found_of:
            view = _sentence(text)
            found_of[text] = words.found(view.terms, view.stems)
        return found_of[text]

    q_tokens = _tokens(query)
    q_bigrams = set(zip(q_tokens, q_tokens[1:]))
    q_content = {t for t in q_tokens if t not in STOPWORDS}
    q_words = set(q_tokens)
    q_dates = {m.group().lower() for m in _DATE.finditer(query)}
    q_normalized = normalize(query)  # as `new_numbers` and `new_names` read the question
    q_numbers = set(_NUMBER.findall(q_normalized))
    q_lower = q_normalized.lower()
    translated_set = frozenset(t for t, _ in translated_weights)

    out: list[Candidate] = []
    previous_words: list[set[str]] = []
    for rank, hit, start, end, text, neighbours in spans:
        doc_id = hit.chunk.doc_id
        cosine = cosine_of[keys[doc_id, text]]
        neighbour_cosine = max((float(cosine_of[keys[doc_id, t]]) for t in neighbours if t), default=float(cosine))
        view = _sentence(text)
        normalized = view.normalized
        found = found_in(text)
        # "总设计师" is not said by a sentence that holds only its part "设计": a near-topic question's tell.
        whole = words.found(view.terms, view.stems, whole_words=True)
        around = set(found)
        previous = found_in(neighbours[0]) if neighbours and neighbours[0] else set()
        for other in neighbours:
            if other:
                around |= found_in(other)
        if doc_id not in in_document_of:
            in_document_of[doc_id] = words.found(*document_terms_of(index, doc_id))
        in_document = in_document_of[doc_id] | around
        missing = [words.weights[w] for w in words.weights if w not in around]
        features = {
            "e5_cosine": float(cosine),
            "neighbour_cosine": neighbour_cosine,
            "bigram_overlap": len(q_bigrams & view.bigrams) / len(q_bigrams) if q_bigrams else 0.0,
            "token_overlap": len(q_content & view.token_set) / len(q_content) if q_content else 0.0,
            "coverage": words.share(found),
            "coverage_with_neighbours": words.share(around),
            "whole_coverage": words.share(whole),
            "coverage_in_document": words.share(in_document),
            "translated_share": (
                0.0
                if translated_set.isdisjoint(view.terms)
                else sum(w for t, w in translated_weights if t in view.terms) / total_weight
            ),
            "missing_word": max(missing, default=0.0) / total_idf,
            "other_language": float(view.chinese != chinese_query),
            "passage_rank": 1.0 / (1.0 + rank),
            "passage_bm25": hit.lexical / best_lexical,
            "unknown_share": unknown,
            "asks_number": float(kind.number),
            "gives_number": float(kind.number and (any(n not in q_numbers for n in view.numbers) or view.number_word)),
            "number_near_words": float(kind.number and number_near_words(normalized, query, words)),
            "asks_date": float(kind.date),
            "gives_date": float(kind.date and any(d not in q_dates for d in view.dates)),
            "asks_name": float(kind.name),
            "gives_name": float(kind.name and any(_is_new_name(n, q_lower) for n in view.names)),
            "new_words": (
                (len(view.raw_words) - sum(map(view.word_counts.__getitem__, view.word_counts.keys() & q_words)))
                / len(view.raw_words)
                if view.raw_words
                else 0.0
            ),
            "previous_coverage": words.share(previous),
            "anaphor": float(view.anaphor),
            "header": float(view.header),
            "header_not_asked": float(view.header and not (kind.date or kind.source)),
            # A title, link or menu line does not end like a sentence; a list item starts with a bullet.
            "statement": float(view.statement),
            "list_item": float(view.list_item),
            "log_length": math.log1p(len(normalized)),
        }
        out.append(Candidate(rank, hit, start, end, text, 0.0, frozenset(found), view.header, features))
        previous_words.append(previous)
    best_cosine = max(c.features["e5_cosine"] for c in out)
    best_coverage = max(c.features["coverage"] for c in out)
    # A word most candidates hold (the article's subject: "Fresno" in an article on Fresno) says
    # little about which sentence answers; one few of them hold says much.
    held = [sum(w in c.words for c in out) for w in words.weights]
    local = {w: math.log((len(out) + 1) / (n + 0.5)) for w, n in zip(words.weights, held)}
    local_total = sum(local.values()) or 1.0
    for c, previous in zip(out, previous_words):
        c.features["local_coverage"] = sum(local[w] for w in c.words) / local_total
        c.features["local_coverage_with_previous"] = sum(local[w] for w in c.words | previous) / local_total
        # The word that singles out what is asked ("极光" of 极光大桥 among passages on bridges), unsaid.
        unsaid = [local[w] for w in local if w not in c.words | previous]
        c.features["local_missing_word"] = max(unsaid, default=0.0) / local_total
    best_local = max(c.features["local_coverage"] for c in out)
    for c in out:
        c.features["local_coverage_gap"] = c.features["local_coverage"] - best_local
    by_cosine = sorted(range(len(out)), key=lambda i: -out[i].features["e5_cosine"])
    for position, i in enumerate(by_cosine):
        out[i].features["e5_rank"] = 1.0 / (1.0 + position)
    for c in out:
        c.features["e5_cosine_gap"] = c.features["e5_cosine"] - best_cosine
        c.features["coverage_gap"] = c.features["coverage"] - best_coverage
    return out


def add_use_features(candidates: Sequence[Candidate], question: str, use: SentenceJudge) -> None:
    """The Universal Sentence Encoder's similarity of each candidate with the question, and its gap to the best."""
    if not candidates:
        return
    similarity = use.similarities(question, [c.text for c in candidates])
    best = float(similarity.max())
    for c, s in zip(candidates, similarity):
        c.features["use_similarity"] = float(s)
        c.features["use_gap"] = float(s) - best


def judge(index: Index, retrieval, model: AnswerJudge, use: SentenceJudge | None, use_top: int = 8) -> list[Candidate]:
    """The sentences of the retrieved passages, each with P(it answers the question), best first.

    Their probabilities sum to P(some sentence answers). The best `use_top` are read a second time
    with the Universal Sentence Encoder's cross-lingual similarity, when `use` is given.
    """
    candidates = candidate_features(index, retrieval)

    def read_again(head: list[int]) -> bool:
        if use is None:
            return False
        add_use_features([candidates[i] for i in head], retrieval.query, use)
        return True

    probabilities, _ = model.score([c.features for c in candidates], use_top, read_again)
    ranked = [c.with_probability(float(p)) for c, p in zip(candidates, probabilities)]
    return sorted(ranked, key=lambda c: -c.probability)


def answerable(judged: Sequence[Candidate]) -> float:
    """P(some sentence answers the question): what abstention is decided on."""
    return float(sum(c.probability for c in judged))


def answerable_features(rows: Sequence[dict[str, float]], shares: np.ndarray, z: np.ndarray) -> dict[str, float]:
    """What the question-level model reads: how sure the ranking is of its best sentence, and
    what that sentence (and the documents) leave of the question's words unsaid."""
    order = np.argsort(-shares, kind="stable")
    top = rows[int(order[0])]
    return {
        "top_share": float(shares[order[0]]),
        "second_share": float(shares[order[1]]) if len(order) > 1 else 0.0,
        "top_score": float(z[order[0]]),
        "top_margin": float(z[order[0]] - z[order[1]]) if len(order) > 1 else 0.0,
        "top_missing_word": top["missing_word"],
        "top_coverage": top["coverage"],
        "top_coverage_with_neighbours": top["coverage_with_neighbours"],
        "top_whole_coverage": top["whole_coverage"],
        "top_coverage_in_document": top["coverage_in_document"],
        "top_local_coverage": top["local_coverage"],
        "top_local_missing_word": top["local_missing_word"],
        "best_coverage_in_document": max(row["coverage_in_document"] for row in rows),
        "unknown_share": top["unknown_share"],
        "top_e5_cosine": top["e5_cosine"],
        "top_gives_type": max(top["gives_number"], top["gives_date"], top["gives_name"]),
        "asks_type": max(top["asks_number"], top["asks_date"], top["asks_name"]),
    }


def rerank(retrieval, judged: Sequence[Candidate]):
    """`retrieval` with its candidate passages reordered by their best sentence's probability.

    Fusion ranks a passage by how much of it is about the question; this asks whether one of its
    sentences answers it. Passages beyond the candidates keep their fused order after them.
    """
    best: dict[int, float] = {}
    for c in judged:
        best[c.hit.row] = max(best.get(c.hit.row, 0.0), c.probability)
    n = len(retrieval.hits) if retrieval.judged is None else retrieval.judged
    head = sorted(retrieval.hits[:n], key=lambda h: -best.get(h.row, -1.0))
    return replace(retrieval, hits=head + retrieval.hits[n:])
