"""Answers: the extractive default, citations that resolve, and abstention on weak evidence.

The extractive answerer needs no language model: it scores every sentence of the retrieved
passages against the question (rag.retrieval.score_sentences: cosine of precomputed sentence
vectors, lifted for the other language; the share of the question's words the sentence holds in
either language; a number when the question asks for one, more so beside a word of the question),
quotes the best ones (the second preferring what the first leaves out), and cites each
with the `[n]` of its passage. The evidence for answering at all is the best sentence's score, lowered by the share of
the question's words that no document mentions in any language and the share that no retrieved
passage holds; below the abstention threshold it says the documents do not hold the answer, in
the question's language, and lists the nearest passages. Trade-off: a quote answers in the
source's words and language, never a synthesis; an LLM backend can do that on top.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from rag.chunking import Chunk
from rag.crosslingual import QueryWords
from rag.documents import is_chinese
from rag.indexing import Index
from rag.rerank import SentenceJudge
from rag.retrieval import Hit, Retrieval, pick_sentences, score_sentences

NOT_FOUND = {
    "en": "The documents do not contain an answer to this question.",
    "zh": "文档中没有找到这个问题的答案。",
}
QUOTE_LABEL = {  # (question language, source language) -> label before a quote
    ("en", "zh"): "(from a Chinese source) ",
    ("zh", "en"): "（英文原文）",
}
# The evidence: the best sentence's score minus these times the share of the question's words
# that no document holds in any form, and the share that the best retrieved passage misses.
UNKNOWN_PENALTY = 0.5
UNCOVERED_PENALTY = 0.2
# A question that asks two things ("How many ..., and how many ...?", "...? ...?") gets one quote
# more: two quotes often both answer its first part (eval: two-part questions 4/8 -> 5/8).
_TWO_QUESTIONS = re.compile(
    r"[?？].*\S.*[?？]|,? and (?:in )?(?:which|what|when|where|who|whom|whose|how)\b", re.IGNORECASE | re.DOTALL
)


def asks_two_things(question: str) -> bool:
    return bool(_TWO_QUESTIONS.search(question))


@dataclass(frozen=True)
class Citation:
    n: int
    doc_id: str
    title: str
    chunk_id: str
    text: str
    start: int
    end: int
    score: float
    # Offsets (into the document) of the sentences quoted from this passage.
    quoted: tuple[tuple[int, int], ...] = ()


@dataclass
class Answer:
    question: str
    answer: str
    abstained: bool
    citations: list[Citation] = field(default_factory=list)
    nearest: list[Citation] = field(default_factory=list)
    timings_ms: dict[str, float] = field(default_factory=dict)
    evidence: float = 0.0
    language: str = "en"
    # Set when an LLM wrote (or tried to write) the answer: see rag.llm.verify_citations.
    verification: dict | None = None
    # The retrieval query when it differs from `question`: a follow-up read with its context.
    query: str = ""

    def to_json(self) -> dict:
        out = {
            "question": self.question,
            "answer": self.answer,
            "abstained": self.abstained,
            "citations": [_citation_json(c) for c in self.citations],
            "timings_ms": {k: round(v, 2) for k, v in self.timings_ms.items()},
            "evidence": round(self.evidence, 4),
            "language": self.language,
        }
        if self.abstained:
            out["nearest"] = [_citation_json(c) for c in self.nearest]
        if self.verification is not None:
            out["verification"] = self.verification
        if self.query:
            out["query"] = self.query
        return out


def _citation_json(c: Citation) -> dict:
    data = asdict(c)
    data["quoted"] = [list(span) for span in c.quoted]
    data["score"] = round(c.score, 4)
    return data


_MARKER = re.compile(r"\[(\d+)\]")


def cited_numbers(text: str) -> list[int]:
    """The `[n]` markers in `text`, in order of appearance."""
    return [int(m) for m in _MARKER.findall(text)]


def check_citations(answer: Answer) -> list[str]:
    """Problems with an answer's citations: markers that resolve nowhere, citations unused."""
    used = set(cited_numbers(answer.answer))
    known = {c.n for c in answer.citations}
    problems = [f"marker [{n}] has no citation" for n in sorted(used - known)]
    problems += [f"citation {n} is never cited" for n in sorted(known - used)]
    return problems


def language_of(text: str) -> str:
    return "zh" if is_chinese(text) else "en"


def evidence_score(index: Index, retrieval: Retrieval, best_sentence: float, words: QueryWords | None = None) -> float:
    """How well the passages support answering: the best sentence's score, less what they lack.

    Off-topic questions ("Who won the 2022 FIFA World Cup?") still find sentences with a fair
    cosine, but ask about words the documents never mention, in either language.
    """
    words = words or QueryWords.of(retrieval.query, index.bm25, retrieval.translation_groups)
    passage_coverage = max((words.coverage(set(index.terms[h.row])) for h in retrieval.hits), default=0.0)
    return (
        best_sentence - UNKNOWN_PENALTY * words.unknown_share(index.bm25) - UNCOVERED_PENALTY * (1.0 - passage_coverage)
    )


def _citation(n: int, hit: Hit, title: str, quoted: tuple[tuple[int, int], ...] = ()) -> Citation:
    chunk: Chunk = hit.chunk
    return Citation(
        n=n,
        doc_id=chunk.doc_id,
        title=title,
        chunk_id=chunk.chunk_id,
        text=chunk.text,
        start=chunk.start,
        end=chunk.end,
        score=hit.score,
        quoted=quoted,
    )


def extractive_answer(
    index: Index,
    retrieval: Retrieval,
    question: str,
    abstain_threshold: float,
    max_sentences: int = 2,
    judge: SentenceJudge | None = None,
    judged: int = 0,
) -> Answer:
    """Quote the `max_sentences` best-scoring sentences with `[n]` markers (one more for a question
    that asks two things), or abstain on weak evidence.

    Always quoting a second sentence (rather than only when it scores close to the best) answers
    more questions on the eval, at the cost of longer answers and citation precision; it is the
    runner-up unless another sentence scores nearly as well and holds words of the question the
    first does not (rag.retrieval.pick_sentences), as the second part of a two-part question does.
    """
    language = language_of(question)
    titles = {doc_id: meta.get("title", doc_id) for doc_id, meta in index.documents.items()}
    ranked = score_sentences(index, retrieval, judge, judged)
    words = QueryWords.of(retrieval.query, index.bm25, retrieval.translation_groups)
    # Abstention was calibrated on the scores before the judge, which reorders but does not grade.
    best = max((s.score - s.judged for s in ranked), default=0.0)
    evidence = evidence_score(index, retrieval, best, words) if ranked else 0.0
    if not ranked or evidence < abstain_threshold:
        nearest = [_citation(i + 1, h, titles.get(h.chunk.doc_id, "")) for i, h in enumerate(retrieval.hits[:3])]
        return Answer(question, NOT_FOUND[language], True, [], nearest, evidence=evidence, language=language)

    chosen = pick_sentences(ranked, words.weights, max_sentences + asks_two_things(question))
    # Quote in document order within a passage, passages in order of first use.
    chosen.sort(key=lambda s: (s.hit_rank, s.start))
    numbers: dict[int, int] = {}
    quoted: dict[int, list[tuple[int, int]]] = {}
    parts = []
    for s in chosen:
        n = numbers.setdefault(s.hit_rank, len(numbers) + 1)
        quoted.setdefault(s.hit_rank, []).append((s.start, s.end))
        label = QUOTE_LABEL.get((language, language_of(s.text)), "")
        parts.append(f"{label}{s.text.strip()} [{n}]")
    citations = [
        _citation(n, retrieval.hits[rank], titles.get(retrieval.hits[rank].chunk.doc_id, ""), tuple(quoted[rank]))
        for rank, n in numbers.items()
    ]
    text = ("" if language == "zh" else " ").join(parts)
    return Answer(question, text, False, citations, [], evidence=evidence, language=language)
