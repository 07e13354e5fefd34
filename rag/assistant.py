"""The assistant: settings + embedder + index -> cited answers, with timings.

It owns the index's life cycle for callers (CLI, web chat, eval): builds it when missing,
refreshes it when the corpus changed, and swaps in a refreshed index only once it is complete,
so questions are always answered from a whole generation. A generation another process wrote
(`rag index`, the server that writes a shared index) is noticed and swapped in too
(rag.live_index). A read-only Assistant (a replica server's) never writes the index: it waits
for one to exist and follows it. Trade-off: staleness is judged from file sizes and modification
times, so a same-size edit within the clock's resolution is missed until the next explicit `rag index`.
"""

from __future__ import annotations

import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace

from rag.answer import Answer, extractive_answer, question_parts
from rag.config import Settings
from rag.documents import iter_document_paths
from rag.embeddings import Embedder, load_embedder
from rag.indexing import Index, IndexError_, IndexMissingError, RefreshReport, load_index, read_manifest, refresh_index
from rag.judge import Candidate, answerable, judge, load_answer_judge, rerank
from rag.live_index import LiveIndex
from rag.llm import LLMAnswerer, LLMError, final_answer, llm_configured
from rag.rerank import load_judge
from rag.retrieval import Retrieval, retrieve


class ReadOnlyIndexError(RuntimeError):
    """A write asked of an Assistant that only reads its index (a replica server's)."""


REPLICA_NOTE = (
    "This server is a replica: it answers from an index that another process writes (`rag index`, "
    "or the one server started without --replica), and picks up each new version by itself. "
    "Add, delete or refresh documents there. · 此服务器为只读副本：请在写入索引的服务器或用 `rag index` 更新文档。"
)


class Assistant:
    def __init__(self, settings: Settings, embedder: Embedder | None = None, read_only: bool = False) -> None:
        self.settings = settings
        self.read_only = read_only
        self.embedder = embedder or load_embedder(settings.embed_model, settings.cache_dir, settings.passage_precision)
        self._live = LiveIndex(
            settings.index_dir, lambda: load_index(settings.index_dir, self.embedder), settings.reload_check_s
        )
        self._refresh_lock = threading.Lock()
        # With an LLM server configured, answers are generated, verified, and fall back to quotes.
        self.llm = LLMAnswerer(settings, self.embedder) if llm_configured(settings) else None
        # P(a sentence answers), fitted (rag.judge); the USE model gives it a cross-lingual second
        # reading of the best sentences (rag.rerank) and loads on first use. (Not in a background
        # thread: on 2 cores its loading and the question's mostly hold the GIL, and a cold `rag ask`
        # was no faster that way: p50 3.41 vs 3.52 s over 6 interleaved runs.)
        self.answer_judge = load_answer_judge()
        self.judge = load_judge() if settings.rerank_sentences > 0 else None
        self.abstain_threshold = (
            self.answer_judge.abstain_threshold if settings.abstain_threshold is None else settings.abstain_threshold
        )
        self.quote_threshold = (
            self.answer_judge.quote_threshold if settings.quote_threshold is None else settings.quote_threshold
        )

    # ------------------------------------------------------------------ index

    @property
    def index(self) -> Index:
        """The generation to answer from; a newer one another process wrote is swapped in (rag.live_index)."""
        return self._live.get()

    def follow_index(self) -> bool:
        """Swap in the generation CURRENT names now, if it is another; True when it was (failures are logged)."""
        return self._live.follow()

    def watch_index(self) -> None:
        """Follow the index from a background thread too, so that an idle server leaves an old generation."""
        self._live.watch()

    def wait_for_index(
        self, report: Callable[[str], None] = lambda stage: None, stop: threading.Event | None = None
    ) -> Index:
        """Wait until the index exists and loads, looking again every few seconds; report why not meanwhile.

        For a replica, whose index another process builds: a missing index, or one that cannot be
        loaded yet (being copied, built with another model), is waited for rather than failed on.
        """
        stop = stop or threading.Event()
        said = None
        while True:
            try:
                index = self._live.load(only_if_missing=True)
                if said is not None:
                    print(f"index {self.settings.index_dir}: answering from {index.path.name}", file=sys.stderr)
                return index
            except IndexMissingError:
                why = (
                    f"waiting for the index in {self.settings.index_dir} (`rag index` or the writing server builds it)"
                )
            except IndexError_ as exc:
                why = f"waiting for a usable index in {self.settings.index_dir}: {exc}"
            report(why)
            if why != said:
                print(why, file=sys.stderr, flush=True)
                said = why
            if stop.wait(max(self.settings.reload_check_s, 1.0)):
                raise IndexMissingError(why)

    def is_stale(self) -> bool:
        """True when the index is missing or the corpus differs from what it was built from."""
        manifest = read_manifest(self.settings.index_dir)
        if manifest is None or manifest.get("model", {}).get("name") != self.embedder.name:
            return True
        # Files skipped as unreadable count as known until they change, or every question would
        # re-read the corpus while one bad file sits in it.
        known = {**manifest.get("skipped", {}), **manifest.get("documents", {})}
        current = {}
        for doc_id, path in iter_document_paths(self.settings.corpus_dir):
            try:
                st = path.stat()
            except OSError:
                st = None
            current[doc_id] = [st.st_size, st.st_mtime_ns] if st else [-1, -1]
        if set(current) != set(known):
            return True
        return any(known[d].get("stamp") != stamp for d, stamp in current.items())

    def refresh(self, rebuild: bool = False, allow_empty: bool = False) -> RefreshReport:
        """Refresh the index on disk, then swap it in; questions meanwhile use the old one.

        `allow_empty`: the corpus was emptied on purpose (its last document deleted from the chat).
        """
        if self.read_only:
            raise ReadOnlyIndexError(REPLICA_NOTE)
        with self._refresh_lock:
            report = refresh_index(self.settings, self.embedder, rebuild=rebuild, allow_empty=allow_empty)
            if report.changed or self._live.loaded is None:
                self._live.load()
            return report

    def ensure_index(self) -> RefreshReport | None:
        """Build or refresh the index if it is missing or stale; None when it was current (or is read-only)."""
        if self.read_only:
            return None
        if self.is_stale():
            return self.refresh()
        return None

    def warm_up(self) -> None:
        """Load what the first question would wait for (index, jieba, dictionaries, the judge), by retrieving once.

        For a server to call once its page is up (about 1-2 s of loading); a failure is left
        for the first real question to report.
        """
        try:
            self.retrieve("长三角 Yangtze River Delta")
        except Exception:  # noqa: BLE001 - the first question raises it again, with its message
            pass

    # ------------------------------------------------------------------ answering

    def retrieve(self, question: str) -> Retrieval:
        """The passages shown for `question`, best first (judged and reordered)."""
        retrieval, _ = self._retrieve(self.index, question, self.settings.top_k)
        return replace(retrieval, hits=retrieval.hits[: self.settings.top_k])

    def _retrieve(self, index: Index, query: str, depth: int) -> tuple[Retrieval, list[Candidate]]:
        """Candidate passages for `query`, reordered by their best sentence, `depth` deep; and the
        judged sentences, best first."""
        s = self.settings
        # The USE judge reads the question (`retrieval.query`, normalized) while it is embedded, on
        # the other core; its vector then waits in the USE cache.
        read_question = (lambda normalized: self.judge.read([normalized])) if self.judge is not None else None
        retrieval = retrieve(
            index,
            self.embedder,
            query,
            s.candidate_passages,
            s.candidates,
            s.rrf_k,
            depth=depth,
            meanwhile=read_question,
        )
        judged = judge(index, retrieval, self.answer_judge, self.judge, s.rerank_sentences)
        return rerank(retrieval, judged), judged

    def ask(self, question: str, history: Sequence[str] = ()) -> Answer:
        return self.ask_detailed(question, history=history)[0]

    def ask_detailed(self, question: str, depth: int = 0, history: Sequence[str] = ()) -> tuple[Answer, Retrieval]:
        """The answer and the retrieval behind it, ranked `depth` deep (for evaluation).

        `history` holds the conversation's earlier questions, oldest first (see `_answer`).
        """
        question = validate_question(question)
        index = self.index  # one generation for the whole question, even if a refresh lands
        s = self.settings
        started = time.perf_counter()
        query = self.standalone_query(question, history)
        retrieval, judged = self._retrieve(index, query, max(s.top_k, depth))
        shown = replace(retrieval, hits=retrieval.hits[: s.top_k])
        retrieved = time.perf_counter()
        answer = self._answer(index, shown, judged, question, query)
        if self.llm is not None:
            answer = final_answer(self._generate(index, shown, query, answer))
        answer.timings_ms = _timings_ms(started, retrieved, time.perf_counter())
        return answer, retrieval

    def ask_stream(self, question: str, history: Sequence[str] = ()) -> Iterator[str | Answer]:
        """Text deltas of the answer as the LLM writes them, then the final Answer.

        `history` holds the conversation's earlier questions: a follow-up is rewritten into a
        standalone query first. The final Answer may differ from the deltas: renumbered
        citations, or the extractive fallback when the reply failed verification.
        Without an LLM there are no deltas, only the extractive Answer.
        """
        question = validate_question(question)
        index = self.index
        s = self.settings
        started = time.perf_counter()
        query = self.standalone_query(question, history)
        retrieval, judged = self._retrieve(index, query, s.top_k)
        retrieval = replace(retrieval, hits=retrieval.hits[: s.top_k])
        retrieved = time.perf_counter()
        answer = self._answer(index, retrieval, judged, question, query)
        if self.llm is not None:
            answer = yield from self._generate(index, retrieval, query, answer)
        answer.timings_ms = _timings_ms(started, retrieved, time.perf_counter())
        yield answer

    def _answer(self, index: Index, retrieval: Retrieval, judged: list[Candidate], question: str, query: str) -> Answer:
        """The extractive answer to `question` over passages retrieved with `query`.

        For a follow-up the two differ: "其中浙江有多少项?" is retrieved together with the question
        it follows, but judging sentences against that whole query quotes the previous answer
        again. So the evidence (and abstention) is judged on the standalone query, and the
        sentences are then chosen by the follow-up itself from the same passages.
        """
        s = self.settings
        evidence = answerable(judged)
        answer = extractive_answer(
            index,
            retrieval,
            judged,
            query,
            evidence,
            self.abstain_threshold,
            self.quote_threshold,
            s.max_answer_sentences,
            [self._judge_again(index, retrieval, part) for part in question_parts(query)[1:]],
        )
        answer = replace(answer, question=question)
        if query == question:
            return answer
        if answer.abstained:
            return replace(answer, query=query)
        # The follow-up's own words, vector and translations judge the passages already found.
        chosen = extractive_answer(
            index,
            retrieval,
            self._judge_again(index, retrieval, question),
            question,
            evidence,
            float("-inf"),
            self.quote_threshold,
            s.max_answer_sentences,
        )
        return replace(chosen, evidence=answer.evidence, query=query)

    def _judge_again(self, index: Index, retrieval: Retrieval, text: str) -> list[Candidate]:
        """The sentences of passages already found, judged for `text` (a part of the question, a follow-up)."""
        s = self.settings
        own = retrieve(index, self.embedder, text, 0, s.candidates, s.rrf_k)
        focused = replace(own, hits=retrieval.hits, judged=len(retrieval.hits))
        return judge(index, focused, self.answer_judge, self.judge, s.rerank_sentences)

    def _generate(self, index: Index, retrieval: Retrieval, question: str, extractive: Answer):
        return self.llm.generate(retrieval.hits, index.documents, question, extractive)

    def standalone_query(self, question: str, history: Sequence[str] = ()) -> str:
        """The retrieval query for a follow-up: the LLM's rewrite if one is configured, else rag.chat's."""
        if not history:
            return question
        if self.llm is not None:
            try:
                return self.llm.rewrite_followup(question, history)
            except LLMError:
                pass  # the surface-cue rewrite below still makes a usable query
        try:
            from rag.chat import contextualize
        except ImportError:
            return question
        return contextualize(question, history)


def _timings_ms(started: float, retrieved: float, done: float) -> dict[str, float]:
    return {
        "retrieve": (retrieved - started) * 1000,
        "answer": (done - retrieved) * 1000,
        "total": (done - started) * 1000,
    }


MAX_QUESTION_CHARS = 2000


class QuestionError(ValueError):
    """A question that cannot be answered as given."""


# Scripts of languages the assistant does not read (its models and dictionary know English and
# Chinese): a question mostly in one of them gets a message rather than a confident wrong quote.
_UNSUPPORTED_SCRIPTS = {
    "Japanese": re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]"),
    "Korean": re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]"),
    "Russian or another Cyrillic-script language": re.compile(r"[\u0400-\u04ff]"),
    "Arabic": re.compile(r"[\u0600-\u06ff]"),
    "Hebrew": re.compile(r"[\u0590-\u05ff]"),
    "Greek": re.compile(r"[\u0370-\u03ff]"),
    "Thai": re.compile(r"[\u0e00-\u0e7f]"),
    "Hindi or another Devanagari-script language": re.compile(r"[\u0900-\u097f]"),
}


def unsupported_language(question: str) -> str | None:
    """The language a question is written in when it is not English or Chinese, else None.

    Japanese is told from Chinese by its kana; a name in another script inside an English or
    Chinese question does not count.
    """
    letters = sum(ch.isalpha() for ch in question) or 1
    for language, script in _UNSUPPORTED_SCRIPTS.items():
        found = len(script.findall(question))
        if found and (language == "Japanese" or found / letters > 0.5):
            return language
    return None


def validate_question(question: str) -> str:
    """Strip control characters and bound the length; refuse what is left empty, or not in English or Chinese."""
    cleaned = "".join(ch if ch.isprintable() or ch in "\n\t" else " " for ch in question).strip()
    if not cleaned:
        raise QuestionError("the question is empty: type a question about your documents")
    language = unsupported_language(cleaned)
    if language:
        raise QuestionError(
            f"this looks like {language}, which the assistant cannot read yet: please ask in English or Chinese. "
            "目前只能回答英文或中文的问题，请用英文或中文提问。"
        )
    if len(cleaned) > MAX_QUESTION_CHARS:
        raise QuestionError(
            f"the question is {len(cleaned)} characters long; the limit is {MAX_QUESTION_CHARS}. "
            "Ask about one thing at a time."
        )
    return cleaned
