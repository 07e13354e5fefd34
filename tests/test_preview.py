"""Page previews: a PDF page rendered with the quoted sentence highlighted, and only where it is.

The PDF is built in code (fpdf2, WQY Micro Hei for the Chinese line) with each sentence on a line
of known position, so where the highlight must fall is known without asking PDFium.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from rag.chat import page_image_html
from rag.documents import load_document
from rag.preview import RENDER_SCALE, find_ignoring_space, page_preview, render_page

FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")
pytestmark = pytest.mark.skipif(not FONT.exists(), reason="needs fonts-wqy-microhei")

MM = 72 / 25.4  # PDF points per millimetre
LINE_MM = 10
LEFT_MM = 20
PAGE_2 = [
    "The northern pier was repaired in May after the storm.",
    "The lighthouse keeper counted 412 ships entering the harbour.",
    "灯塔看守人统计了四百一十二艘进港船只。",
    "Most of the ships carried timber and grain.",
]
QUOTED = 1  # the line quoted


def top_mm(line: int) -> float:
    return 20 + LINE_MM * line


def two_page_pdf() -> bytes:
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.add_font("wqy", fname=str(FONT))
    pdf.set_font("wqy", size=12)
    pdf.add_page()
    pdf.set_xy(LEFT_MM, top_mm(0))
    pdf.cell(text="Harbour report. The port's budget was approved in January.")
    pdf.add_page()
    for i, line in enumerate(PAGE_2):
        pdf.set_xy(LEFT_MM, top_mm(i))
        pdf.cell(h=LINE_MM, text=line)
    return bytes(pdf.output())


def changed_pixels(raw: bytes, quotes: list[str]):
    """The pixels the highlight changed, as (rows, columns) arrays."""
    import numpy as np
    from PIL import Image

    plain = np.asarray(Image.open(io.BytesIO(render_page(raw, 2).png)).convert("RGB"), dtype=int)
    marked = np.asarray(Image.open(io.BytesIO(render_page(raw, 2, quotes).png)).convert("RGB"), dtype=int)
    return np.nonzero(np.abs(plain - marked).sum(axis=2) > 30)


def test_the_quoted_sentence_and_nothing_else_is_highlighted():
    raw = two_page_pdf()
    preview = render_page(raw, 2, [PAGE_2[QUOTED]])
    assert preview.page == 2 and preview.highlighted == 1 and preview.png.startswith(b"\x89PNG")
    rows, cols = changed_pixels(raw, [PAGE_2[QUOTED]])
    assert len(rows) > 1000
    px = MM * RENDER_SCALE
    slack = 2  # pixels: anti-aliasing at the box's edges
    assert rows.min() >= top_mm(QUOTED) * px - slack and rows.max() <= top_mm(QUOTED + 1) * px + slack
    assert cols.min() >= LEFT_MM * px - slack and cols.max() <= (210 - LEFT_MM) * px
    # It covers the sentence from its first letter to its last, not just part of it.
    assert cols.min() <= LEFT_MM * px + 3 * px and cols.max() >= (LEFT_MM + 100) * px


def test_a_chinese_quote_is_highlighted_on_its_line():
    rows, _ = changed_pixels(two_page_pdf(), [PAGE_2[2]])
    px = MM * RENDER_SCALE
    assert len(rows) > 1000
    assert rows.min() >= top_mm(2) * px - 2 and rows.max() <= top_mm(3) * px + 2


def test_a_quote_not_on_the_page_highlights_nothing():
    raw = two_page_pdf()
    assert render_page(raw, 2, ["The port's budget was approved in January."]).highlighted == 0
    assert len(changed_pixels(raw, ["The port's budget was approved in January."])[0]) == 0


def test_quotes_are_found_whatever_the_whitespace():
    page = "The lighthouse keeper\r\ncounted 412  ships."
    assert find_ignoring_space(page, "keeper counted 412 ships.") == (page.index("keeper"), len(page))
    assert find_ignoring_space(page, "ships counted") is None
    assert find_ignoring_space(page, "  ") is None


def test_the_preview_of_an_indexed_pdf_shows_the_quoted_page(tmp_path: Path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "harbour.pdf").write_bytes(two_page_pdf())
    document = load_document(corpus / "harbour.pdf", "harbour.pdf")
    documents = {"harbour.pdf": {"sha256": document.content_hash, "pages": [list(p) for p in document.pages]}}
    start = document.text.index("The lighthouse keeper")
    spans = [(start, start + len(PAGE_2[QUOTED]))]

    preview = page_preview(documents, corpus, "harbour.pdf", document.text, spans)
    assert preview is not None and preview.page == 2 and preview.highlighted == 1
    html = page_image_html(preview)
    assert html.count("<img") == 1 and 'src="data:image/png;base64,' in html and "Page 2" in html

    # Nothing to show: no quote, a document not in the index, a path out of the corpus, a changed file.
    assert page_preview(documents, corpus, "harbour.pdf", document.text, []) is None
    assert page_preview(documents, corpus, "other.pdf", document.text, spans) is None
    (tmp_path / "secret.pdf").write_bytes(two_page_pdf())
    assert page_preview(documents, corpus, "../secret.pdf", document.text, spans) is None
    (corpus / "harbour.pdf").write_bytes(two_page_pdf() + b"\n% edited\n")
    assert page_preview(documents, corpus, "harbour.pdf", document.text, spans) is None


def test_a_text_file_has_no_page_preview(tmp_path: Path):
    (tmp_path / "note.txt").write_text("The pier was repaired.\n", encoding="utf-8")
    document = load_document(tmp_path / "note.txt", "note.txt")
    documents = {"note.txt": {"sha256": document.content_hash}}
    assert page_preview(documents, tmp_path, "note.txt", document.text, [(0, 10)]) is None


def test_the_document_viewer_shows_a_cited_pdf_page_as_an_image(tmp_path: Path):
    from types import SimpleNamespace

    from rag import web
    from rag.history import History

    (tmp_path / "harbour.pdf").write_bytes(two_page_pdf())
    (tmp_path / "note.txt").write_text("The pier was repaired.\n", encoding="utf-8")
    documents = {}
    for name in ("harbour.pdf", "note.txt"):
        doc = load_document(tmp_path / name, name)
        documents[name] = {"title": doc.title, "sha256": doc.content_hash, "pages": [list(p) for p in doc.pages]}
    text = load_document(tmp_path / "harbour.pdf", "harbour.pdf").text
    start = text.index(PAGE_2[QUOTED])
    assistant = SimpleNamespace(
        index=SimpleNamespace(documents=documents, chunks=[]),
        settings=SimpleNamespace(corpus_dir=tmp_path, ocr_languages="", cache_dir=None),
    )
    library = SimpleNamespace(assistant=lambda name, user: assistant)  # one collection, no login
    demo = web.build_app(library, History(tmp_path / "chat.sqlite3"))
    handler = next(f.fn for f in demo.fns.values() if f.name == "open_document")

    def open_document(doc_id, spans):
        return handler(doc_id, spans, "default", None)

    spans = {"harbour.pdf": [[start, start + len(PAGE_2[QUOTED])]], "note.txt": [[0, 10]]}
    viewer = open_document("harbour.pdf", spans)
    assert "<mark>The lighthouse keeper counted 412 ships" in viewer
    assert viewer.count('<img src="data:image/png;base64,') == 1 and "Page 2" in viewer
    assert "<img" not in open_document("note.txt", spans)
    assert "<img" not in open_document("harbour.pdf", {})  # nothing quoted: no page to pick


def test_an_ocr_quote_is_boxed_line_by_line_from_the_words_read():
    from rag.formats.ocr import OcrPage
    from rag.preview import word_boxes

    words = (
        ("The", 10, 10, 40, 30),
        ("pier", 50, 12, 90, 30),
        ("was", 100, 10, 130, 30),
        ("repaired.", 10, 50, 100, 70),  # the next line
        ("灯塔", 10, 90, 50, 110),
    )
    page = OcrPage("The pier was repaired.\n\n灯塔", words, (200, 120))
    assert word_boxes(page, "pier was repaired.") == [(50, 10, 130, 30), (10, 50, 100, 70)]
    assert word_boxes(page, "灯 塔") == [(10, 90, 50, 110)]
    assert word_boxes(page, "was the pier") == []
