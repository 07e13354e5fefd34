"""Answers: the extractive default, citations that resolve, and abstention when nothing answers.

The extractive answerer needs no language model. rag.judge gives every sentence of the retrieved
passages a probability that it answers the question; the best one is quoted when it clears the
abstention threshold, and a second (or, when the question asks two things, a third) only when its
own probability clears the quote bar, so no filler is quoted. Header, dateline and byline lines
are never quoted unless the question asks for a date or a source. When the question asks for a
number, date or name and the best sentence holds exactly one that the question does not, the
answer leads with it ("**585** — ..."). Each quote is cited with the `[n]` of its passage. Below
the threshold it says the documents do not hold the answer, in the question's language, and lists
the nearest passages. Trade-off: a quote answers in the source's words and language, never a
synthesis; an LLM backend can do that on top.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from rag.chunking import Chunk
from rag.documents import as_written, is_chinese, locate
from rag.indexing import Index
from rag.judge import Candidate, QuestionKind, lead_value
from rag.retrieval import Hit, Retrieval

NOT_FOUND = {
    "en": "The documents do not contain an answer to this question.",
    "zh": "文档中没有找到这个问题的答案。",
}
QUOTE_LABEL = {  # (question language, source language) -> label before a quote
    ("en", "zh"): "(from a Chinese source) ",
    ("zh", "en"): "（英文原文）",
}
# A question that asks two things ("How many ..., and how many ...?", "...? ...?") gets one quote
# more: two quotes often both answer its first part (eval: two-part questions 4/8 -> 5/8).
_TWO_QUESTIONS = re.compile(
    r"[?？].*\S.*[?？]|,? and (?:in )?(?:which|what|when|where|who|whom|whose|how)\b", re.IGNORECASE | re.DOTALL
)


def asks_two_things(question: str) -> bool:
    return bool(_TWO_QUESTIONS.search(question))


_SECOND_PART = re.compile(
    r"(?<=[?？])\s*(?=\S)|,? and (?=(?:in )?(?:which|what|when|where|who|whom|whose|how)\b)", re.I
)


def question_parts(question: str) -> list[str]:
    """The things a question asks, one by one: "How many ..., and which ...?" -> two parts.

    Each part after the first is judged on its own over the same passages, so that a quote for
    it can clear the bar even when the whole question's judge gives the first part most weight.
    """
    if not asks_two_things(question):
        return [question]
    return [part.strip() for part in _SECOND_PART.split(question.strip()) if part.strip(" ?？")]


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
    # Where the (first quoted sentence of the) passage is: a 1-based page or slide, or a sheet's
    # name; and its heading path. None when the format has no pages or headings.
    page: int | str | None = None
    section: str | None = None

    @property
    def place(self) -> str:
        """Where the quote is, as a person cites it: "report.pdf · p. 12 · Results › 3.2 Method"."""
        parts = [self.doc_id]
        if self.page is not None:
            parts.append(f"p. {self.page}" if isinstance(self.page, int) else str(self.page))
        if self.section:
            parts.append(self.section)
        return " · ".join(parts)


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
    # The quoted sentences in the order the answer gives them, the best first.
    quotes: list[str] = field(default_factory=list)
    # The number, date or name asked for, when the best sentence holds exactly one: the answer opens with it.
    lead: str | None = None

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
        if self.quotes:
            out["quotes"] = self.quotes
        if self.lead:
            out["lead"] = self.lead
        return out


def _citation_json(c: Citation) -> dict:
    data = asdict(c)
    data["quoted"] = [list(span) for span in c.quoted]
    data["score"] = round(c.score, 4)
    for key in ("page", "section"):  # optional keys: absent, rather than null, for formats without them
        if data[key] is None:
            del data[key]
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


def citation_for(n: int, hit: Hit, documents: dict[str, dict], quoted: tuple[tuple[int, int], ...] = ()) -> Citation:
    """Citation `n` for a passage; `documents` is the index's manifest entry per document (title, pages, sections)."""
    chunk: Chunk = hit.chunk
    meta = documents.get(chunk.doc_id, {})
    at = quoted[0][0] if quoted else chunk.start
    return Citation(
        n=n,
        doc_id=chunk.doc_id,
        title=meta.get("title", chunk.doc_id),
        chunk_id=chunk.chunk_id,
        text=chunk.text,
        start=chunk.start,
        end=chunk.end,
        score=hit.score,
        quoted=quoted,
        page=locate(meta.get("pages", ()), at),
        section=locate(meta.get("sections", ()), at) or None,
    )


def abstention(index: Index, retrieval: Retrieval, question: str, evidence: float) -> Answer:
    """The documents do not hold the answer: say so, and list the nearest passages."""
    language = language_of(question)
    nearest = [citation_for(i + 1, h, index.documents) for i, h in enumerate(retrieval.hits[:3])]
    return Answer(question, NOT_FOUND[language], True, [], nearest, evidence=evidence, language=language)


def usable_quotes(judged: list[Candidate], question: str) -> list[Candidate]:
    """The judged sentences that may be quoted: header lines only when a date or source is asked for."""
    kind = QuestionKind.of(question)
    return [c for c in judged if not c.header or kind.date or kind.source]


def choose_quotes(
    judged: list[Candidate],
    question: str,
    quote_threshold: float,
    max_sentences: int = 2,
    parts: list[list[Candidate]] = (),
) -> list[Candidate]:
    """The best sentence, then those whose own probability clears `quote_threshold` (one more for a
    question that asks two things); header lines only when a date or source is asked for.

    `parts` are the sentences judged for each further part of a two-part question: the best of
    each that clears the bar comes before the whole question's runners-up.
    """
    usable = usable_quotes(judged, question)
    if not usable:
        return []
    limit = max_sentences + asks_two_things(question)
    chosen: list[Candidate] = []
    for c in [usable[0], *(next(iter(usable_quotes(p, question)), None) for p in parts), *usable[1:]]:
        # The first always; a part's best, then the runners-up, when they clear the bar, each once.
        if c is not None and (not chosen or c.probability >= quote_threshold):
            if all((c.hit, c.start, c.text) != (o.hit, o.start, o.text) for o in chosen):
                chosen.append(c)
    return chosen[:limit]


def extractive_answer(
    index: Index,
    retrieval: Retrieval,
    judged: list[Candidate],
    question: str,
    evidence: float,
    abstain_threshold: float,
    quote_threshold: float,
    max_sentences: int = 2,
    parts: list[list[Candidate]] = (),
) -> Answer:
    """Quote the sentences of `judged` (rag.judge.judge over `retrieval`, best first) that answer
    `question`, cited with `[n]` markers; or abstain when `evidence` (rag.judge.AnswerJudge.answerable:
    P(some sentence answers)) is below `abstain_threshold`.

    Only sentences of the passages shown (`retrieval.hits`) are quoted.
    """
    language = language_of(question)
    shown = {hit.row: rank for rank, hit in enumerate(retrieval.hits)}
    judged = [c for c in judged if c.hit.row in shown]
    parts = [[c for c in part if c.hit.row in shown] for part in parts]
    if evidence >= abstain_threshold:
        chosen = choose_quotes(judged, question, quote_threshold, max_sentences, parts)
    else:
        chosen = []
    if not chosen:
        return abstention(index, retrieval, question, evidence)

    numbers: dict[int, int] = {}
    quoted: dict[int, list[tuple[int, int]]] = {}
    parts = []
    for c in chosen:
        rank = shown[c.hit.row]
        n = numbers.setdefault(rank, len(numbers) + 1)
        quoted.setdefault(rank, []).append((c.start, c.end))
        label = QUOTE_LABEL.get((language, language_of(c.text)), "")
        parts.append(f"{label}{c.text.strip()} [{n}]")
    lead = lead_value(as_written(chosen[0].text), question)
    if lead:
        parts[0] = f"{lead_prefix(lead)}{parts[0]}"
    citations = [
        citation_for(n, retrieval.hits[rank], index.documents, tuple(sorted(quoted[rank])))
        for rank, n in numbers.items()
    ]
    text = ("" if language == "zh" else " ").join(parts)
    quotes = [c.text.strip() for c in chosen]
    return Answer(question, text, False, citations, [], evidence=evidence, language=language, quotes=quotes, lead=lead)


def lead_prefix(lead: str) -> str:
    """How an answer opens with its lead value: "**585** — " (Markdown bold, as a terminal shows it too)."""
    return f"**{lead}** — "
