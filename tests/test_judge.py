"""The answer judge: features, the fitted model, reranking, quoting, the lead answer."""

from dataclasses import replace

import pytest

from rag.answer import choose_quotes
from rag.assistant import Assistant
from rag.crosslingual import QueryWords
from rag.indexing import load_index, refresh_index
from rag.judge import (
    FIRST_STAGE,
    SECOND_STAGE,
    AnswerJudge,
    Candidate,
    asks_for_number,
    candidate_features,
    is_header,
    judge,
    lead_value,
    load_answer_judge,
    new_numbers,
    number_near_words,
    rerank,
)
from rag.lexical import BM25
from rag.retrieval import retrieve


@pytest.fixture
def index(settings, embedder):
    refresh_index(settings, embedder)
    return load_index(settings.index_dir, embedder)


def test_the_shipped_model_covers_every_feature_and_says_how_it_was_fitted():
    model = load_answer_judge()
    assert model.stages["first"].features == list(FIRST_STAGE)
    assert model.stages["second"].features == list(SECOND_STAGE)
    assert 0.0 < model.abstain_threshold < 1.0
    assert 0.0 < model.quote_threshold <= 1.0
    assert model.params["trained_by"].startswith("python -m rag.train_judge")
    assert model.params["cross_validated"]  # the figures printed when it was fitted


def test_a_damaged_model_file_names_the_command_that_refits_it(tmp_path):
    path = tmp_path / "judge.json"
    path.write_text("{", encoding="utf-8")
    with pytest.raises(RuntimeError, match="python -m rag.train_judge"):
        AnswerJudge.load(path)


def test_every_candidate_sentence_gets_every_first_stage_feature_once(index, embedder):
    retrieval = retrieve(index, embedder, "How many major achievements did the forum show?", passages=4)
    candidates = candidate_features(index, retrieval)
    assert candidates
    assert all(set(FIRST_STAGE) <= set(c.features) for c in candidates)
    spans = [(c.hit.chunk.doc_id, c.start) for c in candidates]
    assert len(spans) == len(set(spans))  # a sentence shared by overlapping passages is judged once
    best = max(candidates, key=lambda c: c.features["coverage"])
    assert best.features["coverage_gap"] == 0.0


def test_judged_sentences_come_best_first_and_rerank_orders_passages_by_their_best(index, embedder):
    retrieval = retrieve(index, embedder, "论坛集中展示了多少项重大科技成果?", passages=4, depth=6)
    judged = judge(index, retrieval, load_answer_judge(), None)
    probabilities = [c.probability for c in judged]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probabilities)
    assert "585" in judged[0].text
    reranked = rerank(retrieval, judged)
    assert "585" in reranked.hits[0].chunk.text
    assert reranked.hits[reranked.judged :] == retrieval.hits[retrieval.judged :]  # the tail keeps its order
    assert {h.row for h in reranked.hits} == {h.row for h in retrieval.hits}


class FakeUse:
    def __init__(self):
        self.calls = []

    def similarities(self, question, sentences):
        import numpy as np

        self.calls.append(list(sentences))
        return np.array([0.9 if "telescope" in s else 0.1 for s in sentences])


def test_only_the_best_few_are_read_a_second_time(index, embedder):
    retrieval = retrieve(index, embedder, "What did the club observe through the new telescope?", passages=4)
    use = FakeUse()
    judged = judge(index, retrieval, load_answer_judge(), use, use_top=3)
    assert len(use.calls) == 1 and len(use.calls[0]) == 3
    read = set(use.calls[0])
    assert {c.text for c in judged[:3]} == read
    assert all(c.probability <= min(j.probability for j in judged[:3]) for c in judged[3:])


@pytest.mark.parametrize(
    ("question", "asks"),
    [
        ("How many achievements were shown?", True),
        ("What share of the projects won awards?", True),
        ("论坛集中展示了多少项重大科技成果?", True),
        ("浙江有几项成果?", True),
        ("Who chairs the board?", False),
        ("论坛在哪里举行?", False),
    ],
)
def test_questions_asking_for_a_number(question, asks):
    assert asks_for_number(question) is asks


def test_a_number_counts_only_when_the_question_does_not_already_hold_it():
    question = "How many achievements were shown in 2020?"
    assert new_numbers("585项重大科技成果", question) == ["585"]
    assert new_numbers("The 2020 exhibition was online.", question) == []


def test_a_number_next_to_one_of_the_questions_words():
    bm25 = BM25([["江苏", "127", "jiangsu"], ["585", "成果"]])
    question = "How many were from Jiangsu in 2020?"
    words = QueryWords.of(question, bm25, {}, {"zh_en": {}, "en_zh": {}})
    assert number_near_words("上海132项,江苏127项", question, words)  # 江苏 is Jiangsu by its pinyin
    assert not number_near_words("江苏省在长江下游,长三角地区共展示了585项成果", question, words)  # too far
    assert not number_near_words("江苏 2020", question, words)  # the question's own number


@pytest.mark.parametrize(
    "line",
    [
        "发布时间:2023-06-07 16:36:13 来源:ourjiangsu.com",
        "时间:2020-06-09",
        "当前位置:首页>热点资讯",
        "Mondo Finance Updated on 2024-01-29",
        "2023-06-07",
    ],
)
def test_header_lines_are_recognised(line):
    assert is_header(line)


@pytest.mark.parametrize(
    "sentence",
    [
        "The leaders met in Hefei on June 5, 2023, to discuss green development.",
        "论坛集中展示了长三角地区近年来取得的585项重大科技成果。",
        "Tesla died on 7 January 1943.",
    ],
)
def test_statements_are_not_headers(sentence):
    assert not is_header(sentence)


def _candidate(text: str, probability: float, header: bool = False) -> Candidate:
    return Candidate(0, None, 0, len(text), text, probability, header=header)


def test_no_header_line_is_quoted_unless_a_date_or_source_is_asked_for():
    judged = [
        _candidate("发布时间:2023-06-07 16:36:13 来源:ourjiangsu.com", 0.9, header=True),
        _candidate("The symposium was held in Hefei.", 0.6),
    ]
    assert [c.text for c in choose_quotes(judged, "Where was the symposium held?", 0.5)] == [judged[1].text]
    assert choose_quotes(judged, "When was the article published?", 0.5)[0] is judged[0]
    assert choose_quotes(judged, "这篇文章的来源是什么?", 0.5)[0] is judged[0]


def test_a_further_quote_only_when_it_clears_the_bar():
    judged = [_candidate("A.", 0.9), _candidate("B.", 0.55), _candidate("C.", 0.3), _candidate("D.", 0.2)]
    assert [c.text for c in choose_quotes(judged, "What is it?", 0.5)] == ["A.", "B."]
    assert [c.text for c in choose_quotes(judged, "What is it?", 0.95)] == ["A."]  # no filler
    # A question that asks two things may get a third, still only above the bar.
    assert [c.text for c in choose_quotes(judged, "What is it, and where is it?", 0.25)] == ["A.", "B.", "C."]


def test_each_part_of_a_two_part_question_gets_its_best_quote_if_it_clears_the_bar():
    from types import SimpleNamespace

    def at(row: int, text: str, probability: float) -> Candidate:
        return Candidate(0, SimpleNamespace(row=row), 0, len(text), text, probability)

    question = "How many achievements did the forum show, and how many came from Zhejiang?"
    whole = [at(0, "585 achievements.", 0.8), at(1, "Shanghai 132.", 0.3), at(2, "Zhejiang 165.", 0.1)]
    part = [at(2, "Zhejiang 165.", 0.7), at(0, "585 achievements.", 0.2)]
    chosen = choose_quotes(whole, question, 0.25, 2, [part])
    assert [c.text for c in chosen] == ["585 achievements.", "Zhejiang 165.", "Shanghai 132."]
    # Below the bar, the part gets nothing; a sentence is never quoted twice.
    assert [c.text for c in choose_quotes(whole, question, 0.9, 2, [part])] == ["585 achievements."]
    assert [c.text for c in choose_quotes(whole, question, 0.25, 2, [[at(0, "585 achievements.", 0.9)]])] == [
        "585 achievements.",
        "Shanghai 132.",
    ]


def test_question_parts():
    from rag.answer import question_parts

    assert question_parts("How many did it show, and how many came from Zhejiang?") == [
        "How many did it show",
        "how many came from Zhejiang?",
    ]
    assert question_parts("论坛展示了多少项成果?其中浙江有多少项?") == ["论坛展示了多少项成果?", "其中浙江有多少项?"]
    assert question_parts("Where was it held?") == ["Where was it held?"]


@pytest.mark.parametrize(
    ("sentence", "question", "lead"),
    [
        ("论坛集中展示了长三角地区近年来取得的585项重大科技成果。", "论坛集中展示了多少项重大科技成果?", "585"),
        ("The Panthers defense gave up just 308 points.", "How many points did the Panthers give up?", "308"),
        ("Tesla died on 7 January 1943 in New York.", "When did Tesla die?", "7 January 1943"),
        ("特斯拉于1943年1月7日去世。", "特斯拉在哪一年去世?", "1943年1月7日"),
        ("The symposium was held in Hefei.", "Where was the symposium held?", "Hefei"),
        # Two numbers, or none of the kind asked for: no lead.
        ("Shanghai had 132 and Jiangsu 127.", "How many were there?", None),
        ("The council meets twice a year.", "What does the council do?", None),
        # A date's numbers are when, not how many.
        ("6月6日上午,论坛集中展示了585项重大科技成果。", "论坛集中展示了多少项重大科技成果?", "585"),
        # The question's own number is not the answer.
        ("In 2020, 585 achievements were shown.", "How many achievements were shown in 2020?", "585"),
    ],
)
def test_the_lead_answer(sentence, question, lead):
    assert lead_value(sentence, question) == lead


def test_the_answer_leads_with_the_number_asked_for(settings, embedder):
    assistant = Assistant(settings.with_(abstain_threshold=0.0), embedder)
    assistant.refresh()
    answer = assistant.ask("论坛集中展示了多少项重大科技成果?")
    assert answer.answer.startswith("**585** — ")
    assert answer.quotes and "585" in answer.quotes[0]


def test_a_quote_from_a_passage_not_shown_is_never_used(index, embedder, settings):
    from rag.answer import extractive_answer

    question = "论坛集中展示了多少项重大科技成果?"
    retrieval = retrieve(index, embedder, question, passages=4)
    judged = judge(index, retrieval, load_answer_judge(), None)
    shown = replace(retrieval, hits=[h for h in retrieval.hits if "585" not in h.chunk.text][:2])
    answer = extractive_answer(index, shown, judged, question, 1.0, 0.0, 0.5)
    assert "585" not in answer.answer
    assert {c.chunk_id for c in answer.citations} <= {h.chunk.chunk_id for h in shown.hits}


def test_off_topic_unanswerables_keep_only_questions_this_corpus_cannot_answer():
    """`train_judge --off-topic`: other datasets' questions become unanswerables here, unless
    one of their answers occurs in this corpus; the sample is stable and bounded."""
    from rag.train_judge import off_topic_unanswerables

    foreign = [
        {
            "id": "a",
            "question": "Who won Super Bowl 50?",
            "answers": ["Denver Broncos"],
            "doc_ids": ["w0"],
            "tags": ["q-en", "xquad"],
        },
        {"id": "b", "question": "How many were shown?", "answers": ["585"], "doc_ids": ["d1"], "tags": ["q-en"]},
        {"id": "c", "question": "谁设计了这座桥?", "answers": ["林同棪"], "doc_ids": ["w9"], "tags": ["q-zh", "xquad"]},
        {"id": "d", "question": "An unanswerable one", "answers": [], "doc_ids": [], "tags": ["q-en"]},
    ]
    corpus = {"d1": ["The forum showed 585 scientific achievements in Hefei."]}
    kept = off_topic_unanswerables(foreign, corpus, per_dataset=10)
    assert sorted(row["id"] for row in kept) == ["a-offtopic", "c-offtopic"]  # 585 is in the corpus; d has no answer
    for row in kept:
        assert row["answers"] == [] and row["doc_ids"] == []
        assert {"synthetic", "unanswerable", "off-topic"} <= set(row["tags"]) and "xquad" not in row["tags"]
    assert {row["source"] for row in kept} == {"w0", "w9"}  # folds follow the article the question came from
    assert off_topic_unanswerables(foreign, corpus, per_dataset=1) == off_topic_unanswerables(foreign, corpus, 1)
    assert len(off_topic_unanswerables(foreign, corpus, per_dataset=1)) == 1
