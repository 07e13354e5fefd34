"""The answer judge with the real models (e5 and USE): which sentence answers, in either language, and when
none does."""

from pathlib import Path

import pytest

from rag.assistant import Assistant
from rag.config import Settings
from rag.judge import judge
from rag.retrieval import retrieve

pytestmark = pytest.mark.slow

BRIDGE_EN = """The Aurora Bridge

The Aurora Bridge crosses the harbour between the old town and the port.
The Aurora Bridge opened to traffic in 1932, after four years of construction.
The bridge is painted dark green and is lit at night.
About 40,000 vehicles cross it every day.
"""

BRIDGE_ZH = """南京长江大桥

南京长江大桥是长江上第一座由中国自行设计和建造的双层式铁路、公路两用桥梁。
大桥于1968年建成通车，上层为公路桥，下层为双线铁路桥。
桥头堡上装饰着红旗雕塑，夜晚有灯光照明。
大桥每天通过的汽车约有八万辆。
"""

# (question, the sentence that answers it, a sentence on the same topic that does not)
CASES = {
    "en→en": ("When did the Aurora Bridge open to traffic?", "opened to traffic in 1932", "painted dark green"),
    "zh→zh": ("南京长江大桥是哪一年建成通车的?", "1968年建成通车", "红旗雕塑"),
    "en→zh": ("In what year was the Nanjing Yangtze River Bridge opened to traffic?", "1968年建成通车", "红旗雕塑"),
    "zh→en": ("极光大桥是哪一年通车的?", "opened to traffic in 1932", "painted dark green"),
}


@pytest.fixture(scope="module")
def assistant(tmp_path_factory, model_cache_dir):
    root = tmp_path_factory.mktemp("judge-real")
    corpus = root / "corpus"
    corpus.mkdir()
    (corpus / "aurora.txt").write_text(BRIDGE_EN, encoding="utf-8")
    (corpus / "nanjing.txt").write_text(BRIDGE_ZH, encoding="utf-8")
    settings = Settings(corpus_dir=corpus, index_dir=root / "index", cache_dir=Path(model_cache_dir))
    assistant = Assistant(settings)
    assistant.refresh()
    return assistant


@pytest.mark.parametrize("direction", list(CASES))
def test_the_answering_sentence_ranks_above_a_same_topic_one(assistant, direction):
    question, answering, other = CASES[direction]
    s = assistant.settings
    retrieval = retrieve(assistant.index, assistant.embedder, question, s.candidate_passages)
    judged = judge(assistant.index, retrieval, assistant.answer_judge, assistant.judge, s.rerank_sentences)
    rank = {key: next(i for i, c in enumerate(judged) if key in c.text) for key in (answering, other)}
    assert rank[answering] < rank[other]


@pytest.mark.parametrize(
    "direction",
    [
        *(d for d in CASES if d != "zh→en"),
        # The other document's bridge "于1968年建成通车" wins: e5 rates a same-language sentence higher, and the
        # dictionary has no "bridge" for 大桥 (only a name), so "Aurora" alone cannot outweigh it.
        pytest.param(
            "zh→en", marks=pytest.mark.xfail(strict=True, reason="another bridge, in the question's language")
        ),
    ],
)
def test_the_answer_quotes_the_answering_sentence_first(assistant, direction):
    question, answering, _ = CASES[direction]
    answer = assistant.ask(question)
    assert not answer.abstained
    assert answering in answer.quotes[0]


def test_a_near_topic_question_the_documents_do_not_answer_abstains(assistant):
    answer = assistant.ask("Who designed the Aurora Bridge?")
    assert answer.abstained, answer.answer
    assert answer.nearest  # the passages on the bridge are still shown


# Known weaknesses, measured on XQuAD as abstention recall ~0.1 at 5% false abstentions (README).
@pytest.mark.xfail(strict=True, reason="a near-topic question whose missing word's part (设计) is in the text")
def test_a_question_about_a_designer_the_text_never_names_abstains(assistant):
    assert assistant.ask("南京长江大桥的总设计师是谁?").abstained


@pytest.mark.xfail(strict=True, reason="the answer names its subject only by 'it': P(answerable) falls short")
def test_an_answer_that_names_its_subject_by_a_pronoun_is_given(assistant):
    assert not assistant.ask("How many vehicles cross the Aurora Bridge every day?").abstained


def test_the_lead_answer_for_a_number_question(assistant):
    settings = assistant.settings.with_(abstain_threshold=0.0)  # the lead, whatever the abstention decides
    answer = Assistant(settings, assistant.embedder).ask("How many vehicles cross the Aurora Bridge every day?")
    assert answer.answer.startswith("**40,000** — ")
