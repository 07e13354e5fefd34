"""The web chat's functions: citation markers, safe sources HTML, highlighting, follow-ups."""

from __future__ import annotations

import hashlib
import html
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from rag.answer import Answer, Citation
from rag.chat import (
    contextualize,
    document_html,
    document_text,
    draft_message,
    escape_markdown,
    format_answer,
    highlight,
    index_html,
    is_follow_up,
    quoted_spans,
    relevance_label,
    short_title,
    sources_html,
)
from rag.chunking import Chunk

ROOT = Path(__file__).resolve().parent.parent
HOSTILE = '<script>alert(1)</script> <img src=x onerror="alert(1)"> [click](javascript:alert(1))'


def citation(n: int = 1, text: str = "Alpha beta. Gamma delta.", start: int = 100, **kw) -> Citation:
    fields = dict(
        n=n,
        doc_id=f"doc{n}.txt",
        title=f"Title {n}",
        chunk_id=f"c{n}",
        text=text,
        start=start,
        end=start + len(text),
        score=0.0491,
        quoted=(),
    )
    fields.update(kw)
    return Citation(**fields)


def answer(text: str, citations: list[Citation], **kw) -> Answer:
    return Answer(question=kw.pop("question", "Q?"), answer=text, abstained=False, citations=citations, **kw)


# --------------------------------------------------------------------------- chat message


def test_markers_become_labels_tied_to_their_sources():
    message = format_answer(answer("Gamma delta. [1] Epsilon. [2]", [citation(1), citation(2)]))
    assert re.search(r'<sup class="cite" title="Title 1 \(doc1\.txt\)">&#91;1&#93;</sup>', message)
    assert re.search(r'<sup class="cite" title="Title 2 \(doc2\.txt\)">&#91;2&#93;</sup>', message)
    footer = message.split("cite-list", 1)[1]
    assert "&#91;1&#93;</span> Title 1" in footer and "doc1&#46;txt" not in footer
    assert "doc1.txt" in footer and "doc2.txt" in footer


def test_a_marker_without_a_citation_is_not_made_a_label():
    message = format_answer(answer("Claim. [3]", [citation(1)]))
    assert "&#91;3&#93;" in message
    assert 'title="' not in message.split("cite-list")[0]


def test_abstention_says_so_and_points_to_the_nearest_passages():
    abstained = Answer("Q?", "The documents do not contain an answer to this question.", True, [], [citation(1)])
    message = format_answer(abstained)
    assert message.startswith("The documents do not contain an answer")
    assert "nearest passages" in message and "cite-list" not in message
    zh = Answer("问?", "文档中没有找到这个问题的答案。", True, [], [citation(1)], language="zh")
    assert "最接近的段落" in format_answer(zh)


def test_untrusted_answer_text_is_inert_in_the_chat():
    message = format_answer(answer(f"{HOSTILE} [1]", [citation(1, title=HOSTILE, doc_id='x"><img src=x>.txt')]))
    assert "<script" not in message and "<img" not in message
    assert "](javascript" not in message and "[click]" not in message
    assert 'title="&lt;script&gt;' in message  # the tooltip holds escaped text


def test_markdown_escaping_round_trips_without_double_escaping():
    text = 'People\'s "quoted" <b> & [x](y) `code` *em* _u_ #h $x$ a-b | ~ \\ 1:2'
    escaped = escape_markdown(text)
    assert html.unescape(escaped) == text
    assert not re.search(r"[<>\"'\[\]()`*_#$|~\\]", re.sub(r"&#\d+;", "", escaped))
    assert "&amp;#" not in escaped


def test_short_title_cuts_at_a_word():
    assert short_title("China News Service, Hangzhou, January 21 (Reporter Hu)", 30) == "China News Service, Hangzhou…"
    assert short_title("Short", 30) == "Short"


# --------------------------------------------------------------------------- sources panel


def test_highlight_marks_quoted_document_offsets_within_the_passage():
    text = "Alpha beta. Gamma delta. Epsilon."
    # The passage starts at document offset 100; "Gamma delta." is at 112..124 in the document.
    assert highlight(text, 100, [(112, 124)]) == "Alpha beta. <mark>Gamma delta.</mark> Epsilon."
    # Spans reaching outside the passage are clipped, overlapping ones merged in order.
    assert highlight(text, 100, [(90, 105), (103, 110)]) == "<mark>Alpha beta</mark>. Gamma delta. Epsilon."
    assert highlight(text, 100, [(500, 600)]) == html.escape(text)


def test_highlighted_text_is_escaped_inside_and_outside_the_mark():
    text = "<b>x</b> <script>alert(1)</script> tail"
    out = highlight(text, 0, [(9, 34)])
    assert out == "&lt;b&gt;x&lt;/b&gt; <mark>&lt;script&gt;alert(1)&lt;/script&gt;</mark> tail"


def test_sources_panel_shows_title_file_place_relevance_in_words_and_the_score_only_in_details():
    c = citation(1, text="Alpha beta. Gamma delta.", start=100, quoted=((112, 124),), page=2, section="Results")
    panel = sources_html(answer("Gamma delta. [1]", [c], evidence=0.9))
    assert "Title 1" in panel and "doc1.txt" in panel and "p. 2 · Results" in panel
    assert "<mark>Gamma delta.</mark>" in panel
    assert 'id="src-1"' in panel and "&#91;1&#93;" in panel
    visible, details = panel.split('<details class="src-details">')
    assert "strong evidence" in visible
    assert "0.049" not in visible and "100" not in visible  # no fusion score, no offsets outside the toggle
    assert "score 0.049" in details and "100–124" in details


def test_the_relevance_words_follow_the_judges_evidence_and_say_when_nothing_answered():
    def label(evidence, abstained=False, language="en"):
        a = Answer("Q?", "x", abstained, [citation(1)], [citation(1)], evidence=evidence, language=language)
        return relevance_label(a)

    assert label(0.95) == "Quoted · strong evidence"
    assert label(0.6) == "Quoted · likely answers the question"
    assert label(0.4) == "Quoted · weak evidence: check it"
    assert label(0.1, abstained=True) == "Nearest passage · does not answer the question"
    assert label(0.95, language="zh") == "已引用 · 证据充分"


def test_sources_panel_escapes_hostile_documents():
    c = citation(1, text=HOSTILE, title=HOSTILE, doc_id="<img src=x onerror=alert(1)>.txt", quoted=((100, 130),))
    panel = sources_html(answer("x [1]", [c], question=HOSTILE), asked="y")
    assert "<script" not in panel and "<img" not in panel
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in panel
    assert 'href="javascript' not in panel and "<a " not in panel


def test_sources_panel_says_what_was_searched_for_a_follow_up():
    a = answer("x [1]", [citation(1)], question="Who chairs Huali? Which alliance is he in?")
    assert "Searched with the conversation" in sources_html(a, asked="Which alliance is he in?")
    assert "Searched" not in sources_html(a, asked=a.question)
    # The assistant keeps the follow-up as the question and records the query it searched.
    b = answer("x [1]", [citation(1)], question="Which alliance is he in?")
    b.query = "Who chairs Huali? Which alliance is he in?"
    panel = sources_html(b, asked="Which alliance is he in?")
    assert "Searched with the conversation" in panel and "Who chairs Huali?" in panel


def test_sources_panel_lists_nearest_passages_when_abstaining():
    a = Answer("Q?", "The documents do not contain an answer to this question.", True, [], [citation(1), citation(2)])
    panel = sources_html(a)
    assert "No answer found" in panel and "doc1.txt" in panel and "doc2.txt" in panel
    assert "<mark>" not in panel


def test_empty_panel_invites_a_question():
    assert "Ask a question" in sources_html(None)


def test_quoted_spans_group_by_document():
    a = answer("x [1] y [2]", [citation(1, quoted=((1, 5),)), citation(2, doc_id="doc1.txt", quoted=((9, 12),))])
    assert quoted_spans(a) == {"doc1.txt": [(1, 5), (9, 12)]}
    assert quoted_spans(None) == {}


# --------------------------------------------------------------------------- documents and index


def _index_of(corpus: Path, doc_id: str, text: str) -> SimpleNamespace:
    raw = text.encode()
    chunks = [
        Chunk(chunk_id="a", doc_id=doc_id, start=0, end=11, text=text[:11], sentences=()),
        Chunk(chunk_id="b", doc_id=doc_id, start=12, end=len(text), text=text[12:], sentences=()),
    ]
    (corpus / doc_id).write_bytes(raw)
    meta = {"title": "T", "sha256": hashlib.sha256(raw).hexdigest(), "chars": len(text)}
    return SimpleNamespace(documents={doc_id: meta}, chunks=chunks)


def test_document_text_opens_only_indexed_documents(tmp_path: Path):
    index = _index_of(tmp_path, "a.txt", "Alpha beta.\nGamma delta.")
    (tmp_path / "secret.txt").write_text("not indexed")
    assert document_text(index, tmp_path, "a.txt") == "Alpha beta.\nGamma delta."
    assert document_text(index, tmp_path, "secret.txt") is None
    assert document_text(index, tmp_path, "../a.txt") is None


def test_document_text_falls_back_to_the_indexed_text_when_the_file_changed(tmp_path: Path):
    index = _index_of(tmp_path, "a.txt", "Alpha beta.\nGamma delta.")
    (tmp_path / "a.txt").write_text("Something else entirely")
    assert document_text(index, tmp_path, "a.txt") == "Alpha beta. Gamma delta."
    (tmp_path / "a.txt").unlink()
    assert document_text(index, tmp_path, "a.txt") == "Alpha beta. Gamma delta."


def test_document_viewer_escapes_and_marks():
    out = document_html("d<1>.txt", HOSTILE, f"Intro. {HOSTILE} End.", [(7, 32)])
    assert "<script" not in out and "<img" not in out
    assert "<mark>&lt;script&gt;alert(1)&lt;/script&gt;</mark>" in out
    assert "Not in the index" in document_html("x.txt", "x", None)


def test_index_panel_shows_model_time_and_escaped_documents():
    manifest = {
        "model": {"name": "multilingual-e5-small", "dimension": 384},
        "updated": "2026-01-01T00:00:00+00:00",
        "created": "2025-12-31T00:00:00+00:00",
        "counts": {"documents": 1, "chunks": 2, "sentences": 3},
        "documents": {"a<b>.txt": {"title": HOSTILE, "chars": 1234}},
    }
    out = index_html(manifest)
    assert "multilingual-e5-small" in out and "2026-01-01T00:00:00+00:00" in out and "1,234" in out
    assert "a&lt;b&gt;.txt" in out and "<script" not in out and "<img" not in out


# --------------------------------------------------------------------------- follow-ups

FOLLOW_UPS = [
    "And how many came from Zhejiang?",
    "How many of them have been replicated across the country?",
    "What support did he suggest for Huzhou?",
    "and in 2024?",
    "Where will the next one be held?",
    "How many came from Anhui?",
    "其中浙江有多少项?",
    "那安徽呢？",
    "它是什么时候成立的?",
]
STANDALONE = [
    "How many major scientific and technological achievements were shown at the second forum?",
    "Where was the 2023 symposium held?",
    "Who is the chairman of the board of Huali Group Co., Ltd.?",
    "第二届长三角一体化发展高层论坛集中展示了多少项重大科技成果?",
    "长三角其他城市有哪些合作项目?",
    "What is one of the three major missions of the integration?",
    "What is the Yangtze River Delta Ecological Green Integrated Development Demonstration Zone and why was it set up?",
]


@pytest.mark.parametrize("question", FOLLOW_UPS)
def test_follow_ups_are_searched_with_the_previous_question(question):
    assert is_follow_up(question)
    assert contextualize(question, ["Where was the 2023 symposium held?"]) == (
        f"Where was the 2023 symposium held? {question}"
    )


@pytest.mark.parametrize("question", STANDALONE)
def test_standalone_questions_are_left_alone(question):
    assert not is_follow_up(question)
    assert contextualize(question, ["Where was the 2023 symposium held?"]) == question


def test_without_history_a_follow_up_is_left_alone():
    assert contextualize("And how many came from Zhejiang?", []) == "And how many came from Zhejiang?"
    assert contextualize("那安徽呢?", ["", "  "]) == "那安徽呢?"


def test_a_chain_of_follow_ups_keeps_the_question_it_started_from():
    history = ["第二届长三角一体化发展高层论坛集中展示了多少项重大科技成果?", "其中浙江有多少项?"]
    assert contextualize("那安徽呢?", history) == f"{history[0]} 那安徽呢?"
    assert contextualize("那安徽呢?", ["其中浙江有多少项?"]) == "其中浙江有多少项? 那安徽呢?"


def test_multiturn_eval_cases_are_follow_ups_with_verbatim_answers():
    rows = [json.loads(line) for line in (ROOT / "eval" / "multiturn.jsonl").read_text("utf-8").splitlines() if line]
    assert 4 <= len(rows) <= 6
    assert len({r["id"] for r in rows}) == len(rows)
    for row in rows:
        assert "multiturn" in row["tags"] and row["match"] in ("any", "all")
        assert is_follow_up(row["question"]), row["id"]
        assert contextualize(row["question"], row["history"]) != row["question"], row["id"]
        gold = "".join((ROOT / "corpus" / d).read_text("utf-8") for d in row["doc_ids"])
        assert all(a in gold for a in row["answers"]), row["id"]


# --------------------------------------------------------------------------- the app builds


def test_build_app_makes_a_blocks_app_without_touching_the_index():
    gr = pytest.importorskip("gradio")
    from rag.history import History
    from rag.web import build_app

    stub = SimpleNamespace(settings=SimpleNamespace(corpus_dir=ROOT / "corpus"))  # no index, no model
    assert isinstance(build_app(stub, History()), gr.Blocks)


def test_app_py_launches_the_packaged_chat_without_importing_gradio():
    # A thin launcher: the chat lives in rag.web, which an installed package (rag serve) has too.
    import subprocess
    import sys

    code = "import sys, runpy; runpy.run_path('app.py', run_name='app'); print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_a_streaming_draft_is_escaped_and_marked_unverified():
    message = draft_message('<img src=x onerror="alert(1)"> 585 [1]', "en")
    assert "<img" not in message
    assert "checked when the answer is complete" in message
    assert "回答完成后会核对引用" in draft_message("585", "zh")


def test_the_lead_value_is_bold_and_the_rest_stays_inert():
    answer = Answer(
        "How many?",
        "**585** — <b>585</b> achievements were **shown**. [1]",
        False,
        [Citation(1, "a.txt", "A", "c1", "585 achievements were shown.", 0, 28, 0.5)],
        lead="585",
    )
    html = format_answer(answer)
    assert html.startswith("<strong>585</strong> — ")
    assert "<b>" not in html and "**shown**" not in html  # escaped, not rendered
