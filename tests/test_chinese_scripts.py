"""Traditional and Simplified Chinese meet in search (OpenCC at index and query time), quotes stay as written."""

import pytest

from rag.assistant import Assistant
from rag.documents import normalize

# Every word a question about it would use is written differently in the two scripts.
TRADITIONAL = """臺灣圖書館統計

2月6日，臺灣圖書館發佈了年度統計報告。
年度報告顯示，臺灣圖書館的藏書總數達到了3500萬冊。
館內閱覽座位1200個，每週開館六天。
"""


def test_the_search_form_of_traditional_chinese_is_simplified():
    assert normalize("臺北國際書展　出版社") == "台北国际书展 出版社"
    assert normalize("长三角 G60") == "长三角 G60"  # Simplified and English stay as they are


@pytest.fixture
def assistant(settings, embedder):
    (settings.corpus_dir / "traditional.txt").write_text(TRADITIONAL, encoding="utf-8")
    assistant = Assistant(settings, embedder)
    assistant.refresh()
    return assistant


def test_a_simplified_question_finds_traditional_text_and_quotes_it_as_written(assistant):
    answer = assistant.ask("台湾图书馆的藏书总数达到了多少万册?")
    assert not answer.abstained
    assert answer.lead == "3500萬"  # as written, not 3500万
    assert "臺灣圖書館的藏書總數達到了3500萬冊" in answer.answer
    citation = next(c for c in answer.citations if c.doc_id == "traditional.txt")
    assert citation.text == TRADITIONAL[citation.start : citation.end]


def test_a_traditional_question_finds_simplified_text(assistant):
    answer = assistant.ask("論壇集中展示了多少項重大科技成果?")
    assert not answer.abstained
    assert "585项重大科技成果" in answer.answer
    assert "chinese.txt" in {c.doc_id for c in answer.citations}
