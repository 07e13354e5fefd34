import json

import pytest

from rag.answer import Answer, Citation, asks_two_things, check_citations, cited_numbers, language_of
from rag.assistant import MAX_QUESTION_CHARS, Assistant, QuestionError, unsupported_language, validate_question

CITATION_KEYS = {"n", "doc_id", "title", "chunk_id", "text", "start", "end", "score"}

ANSWERABLE = [
    ("Which airship carries tourists between the islands?", "alpha.txt", "zeppelin Aurora"),
    ("论坛集中展示了多少项重大科技成果?", "chinese.txt", "585"),
    ("What did the club observe through the new telescope?", "beta.md", "quasar"),
]
UNANSWERABLE = [
    ("Who won the 2022 FIFA World Cup?", "en"),
    ("谁赢得了世界杯足球赛冠军?", "zh"),
]


@pytest.fixture
def assistant(settings, embedder):
    assistant = Assistant(settings, embedder)
    assistant.refresh()
    return assistant


def roundtrip(answer: Answer) -> dict:
    """The JSON an API client would receive."""
    return json.loads(json.dumps(answer.to_json(), ensure_ascii=False))


def assert_citation_shape(citation: dict, corpus_dir) -> None:
    assert CITATION_KEYS <= set(citation)
    assert isinstance(citation["n"], int) and citation["n"] >= 1
    text = (corpus_dir / citation["doc_id"]).read_text(encoding="utf-8")
    assert citation["text"] == text[citation["start"] : citation["end"]]
    assert citation["title"] == text.strip().splitlines()[0].lstrip("# ")


@pytest.mark.parametrize(("question", "doc_id", "fact"), ANSWERABLE)
def test_an_answer_quotes_its_source_with_citations_that_resolve(assistant, corpus_dir, question, doc_id, fact):
    answer = assistant.ask(question)
    data = roundtrip(answer)
    assert {"question", "answer", "abstained", "citations", "timings_ms"} <= set(data)
    assert data["question"] == question
    assert data["abstained"] is False
    assert fact in data["answer"]
    assert "nearest" not in data

    assert check_citations(answer) == []
    numbers = [c["n"] for c in data["citations"]]
    assert sorted(numbers) == list(range(1, len(numbers) + 1))
    assert set(cited_numbers(data["answer"])) == set(numbers)
    for citation in data["citations"]:
        assert_citation_shape(citation, corpus_dir)
    assert doc_id in {c["doc_id"] for c in data["citations"]}
    # The fact is quoted from a cited passage, not from somewhere else.
    assert any(fact in c["text"] for c in data["citations"])


def test_timings_cover_retrieval_and_answering(assistant):
    timings = roundtrip(assistant.ask(ANSWERABLE[0][0]))["timings_ms"]
    assert set(timings) == {"retrieve", "answer", "total"}
    assert all(value >= 0 for value in timings.values())
    assert timings["total"] == pytest.approx(timings["retrieve"] + timings["answer"], abs=0.02)


@pytest.mark.parametrize(("question", "language"), UNANSWERABLE)
def test_abstaining_cites_nothing_and_answers_in_the_questions_language(assistant, corpus_dir, question, language):
    answer = assistant.ask(question)
    data = roundtrip(answer)
    assert data["abstained"] is True
    assert data["citations"] == []
    assert cited_numbers(data["answer"]) == []
    assert language_of(data["answer"]) == language
    assert data["nearest"], "an abstention should still point at the nearest passages"
    for citation in data["nearest"]:
        assert_citation_shape(citation, corpus_dir)


def test_the_abstention_message_differs_by_language(assistant):
    english, chinese = (assistant.ask(q).answer for q, _ in UNANSWERABLE)
    assert english != chinese


def _citation(n: int) -> Citation:
    return Citation(n=n, doc_id="a.txt", title="A", chunk_id=f"c{n}", text="t", start=0, end=1, score=0.1)


def test_check_citations_reports_dangling_markers_and_unused_citations():
    ok = Answer("q", "First [1]. Second [2]. First again [1].", False, [_citation(1), _citation(2)])
    assert check_citations(ok) == []
    broken = Answer("q", "Claim [1]. Other claim [3].", False, [_citation(1), _citation(2)])
    problems = check_citations(broken)
    assert len(problems) == 2
    assert any("[3]" in p for p in problems)
    assert any("2" in p and "never cited" in p for p in problems)


# --------------------------------------------------------------------------- questions


@pytest.mark.parametrize("question", ["", "   ", "\n\t  \n", "\x00\x07\x1b"])
def test_empty_questions_are_refused(question):
    with pytest.raises(QuestionError, match="empty"):
        validate_question(question)


def test_too_long_questions_are_refused_with_the_limit():
    assert validate_question("长" * MAX_QUESTION_CHARS) == "长" * MAX_QUESTION_CHARS
    with pytest.raises(QuestionError, match=str(MAX_QUESTION_CHARS)):
        validate_question("x" * (MAX_QUESTION_CHARS + 1))


def test_control_characters_are_stripped_and_the_question_trimmed():
    cleaned = validate_question("  What\x00 is\x1b[31m the\u200b answer?\x07\n")
    assert all(ch.isprintable() for ch in cleaned)
    assert cleaned.startswith("What") and cleaned.endswith("answer?")
    assert "answer" in cleaned and "[31m" in cleaned
    assert validate_question("长三角\n一体化?") == "长三角\n一体化?"


def test_the_assistant_validates_before_answering(assistant, embedder):
    with pytest.raises(QuestionError):
        assistant.ask(" \x00 ")
    assert embedder.embedded_queries == []


def test_a_follow_up_is_retrieved_with_its_context_and_answered_by_itself(assistant, monkeypatch):
    import rag.assistant

    queries = []
    real_retrieve = rag.assistant.retrieve

    def spy(index, embedder, question, *args, **kwargs):
        queries.append(question)
        return real_retrieve(index, embedder, question, *args, **kwargs)

    monkeypatch.setattr(rag.assistant, "retrieve", spy)
    first = "论坛集中展示了多少项重大科技成果?"
    answer = assistant.ask("其中浙江有多少项?", history=[first])
    assert queries[0] == f"{first} 其中浙江有多少项?"
    assert not answer.abstained
    assert "浙江165项" in answer.answer
    assert check_citations(answer) == []
    assert answer.question == "其中浙江有多少项?"
    assert roundtrip(answer)["query"] == f"{first} 其中浙江有多少项?"


def test_a_question_that_is_not_a_follow_up_ignores_the_history(assistant, monkeypatch):
    import rag.assistant

    queries = []
    real_retrieve = rag.assistant.retrieve
    monkeypatch.setattr(
        rag.assistant, "retrieve", lambda i, e, q, *a, **k: queries.append(q) or real_retrieve(i, e, q, *a, **k)
    )
    answer = assistant.ask("What did the club observe through the new telescope?", history=["论坛展示了多少项成果?"])
    assert queries == ["What did the club observe through the new telescope?"]
    assert "quasar" in answer.answer


# --------------------------------------------------------------------------- evidence


def test_words_the_documents_never_mention_pull_the_evidence_below_the_threshold(assistant):
    plain = assistant.ask("Which airship carries tourists between the islands?")
    assert not plain.abstained
    answer = assistant.ask("Which airship carries FIFA football fans between the islands?")
    assert answer.abstained
    assert answer.evidence < assistant.abstain_threshold <= plain.evidence


def test_the_first_quote_answers_and_no_quote_is_filler(assistant):
    answer = assistant.ask("论坛集中展示了多少项重大科技成果?")
    assert "585" in answer.quotes[0]
    assert answer.answer.count("[") == len(answer.quotes) <= 2


@pytest.mark.parametrize(
    ("question", "two"),
    [
        ("How many achievements did the forum show, and how many came from Zhejiang?", True),
        ("Which city hosted the symposium, and in which month?", True),
        ("论坛展示了多少项成果?其中浙江有多少项?", True),
        ("How many achievements did the forum show?", False),
        ("Tea and rice: which grows on the terraces?", False),
        ("论坛展示了多少项成果??", False),
    ],
)
def test_questions_that_ask_two_things(question, two):
    assert asks_two_things(question) is two


def test_a_question_that_asks_two_things_may_get_a_third_quote(settings, embedder):
    assistant = Assistant(settings.with_(quote_threshold=0.0), embedder)  # every candidate clears the bar
    assistant.refresh()
    answer = assistant.ask("论坛集中展示了多少项重大科技成果?其中浙江有多少项?")
    assert sum(len(c.quoted) for c in answer.citations) == 3
    assert "585" in answer.answer and "165" in answer.answer
    assert sum(len(c.quoted) for c in assistant.ask("论坛集中展示了多少项重大科技成果?").citations) == 2


@pytest.mark.parametrize(
    ("question", "language"),
    [
        ("長江デルタのフォーラムでは何件の成果が展示されましたか?", "Japanese"),
        ("포럼에서 몇 개의 성과가 전시되었습니까?", "Korean"),
        ("Сколько достижений было показано на форуме?", "Russian"),
    ],
)
def test_a_question_in_a_language_it_cannot_read_gets_a_message_in_english_and_chinese(assistant, question, language):
    with pytest.raises(QuestionError, match=language) as raised:
        assistant.ask(question)
    assert "English or Chinese" in str(raised.value) and "英文或中文" in str(raised.value)


@pytest.mark.parametrize(
    "question",
    ["When did the composer Чайковский write Swan Lake?", "论坛集中展示了多少项重大科技成果?", "Where is Zürich?"],
)
def test_a_name_in_another_script_does_not_make_a_question_unsupported(question):
    assert unsupported_language(question) is None
