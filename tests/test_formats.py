"""Document formats: each kind read into text with its pages, sections and title; fixtures built in code.

The answers are checked end to end (index, ask, citation page and section) with the fake embedder;
tests/test_commands.py runs the same through `rag index` / `rag ask --json` with the real model.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from rag.assistant import Assistant
from rag.documents import load_corpus, locate
from rag.formats import ConversionError, kind_of

CJK_FONT = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")

PDF_PAGES = [
    "Harbour Annual Report. This report covers the harbour authority's year.",
    "The new lighthouse on Gull Point was finished in March. Its lamp can be seen from 40 kilometres away.\n"
    "灯塔由本地工匠建造，耗资三百万元。",
    "Finances. The harbour earned 12 million in mooring fees during the year.",
]


def make_pdf(pages: list[str], title: str = "", bookmarks: dict[int, str] | None = None, password: str = "") -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    if CJK_FONT.exists():
        pdf.add_font("cjk", fname=str(CJK_FONT))
        font = "cjk"
    else:  # Latin text only (CI installs the font; this keeps the unit tests runnable elsewhere)
        font = "helvetica"
    for number, text in enumerate(pages):
        pdf.add_page()
        pdf.set_font(font, size=11)
        if bookmarks and number in bookmarks:
            pdf.start_section(bookmarks[number])
        pdf.multi_cell(0, 7, text if font == "cjk" else text.encode("latin-1", "ignore").decode("latin-1"))
    if title:
        pdf.set_title(title)
    if password:
        pdf.set_encryption(owner_password="owner", user_password=password)
    return bytes(pdf.output())


def make_docx() -> bytes:
    import docx

    document = docx.Document()
    document.core_properties.title = "Ferry Timetable"
    document.add_heading("Services", level=1)
    document.add_paragraph("Ferries run every day of the year except Christmas.")
    document.add_heading("Night ferry", level=2)
    document.add_paragraph("The night ferry to Pine Island leaves at 23:40 from pier seven.")
    table = document.add_table(rows=3, cols=2)
    for row, (route, fare) in zip(
        table.rows, [("Route", "Fare"), ("Pine Island", "8 euros"), ("Cedar Bay", "5 euros")]
    ):
        row.cells[0].text, row.cells[1].text = route, fare
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def make_pptx() -> bytes:
    import pptx
    from pptx.util import Inches

    deck = pptx.Presentation()
    for title, body, notes in [
        ("Roadmap", "Phase one builds the visitor centre.", "Speaker notes: thank the council."),
        ("Budget", "The visitor centre costs 4 million.", "The glass roof was donated by a local firm."),
    ]:
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text_frame.text = body
        slide.notes_slide.notes_text_frame.text = notes
    box = deck.slides[1].shapes.add_textbox(Inches(1), Inches(6), Inches(4), Inches(1))
    box.text_frame.text = "Figures are in euros."
    out = io.BytesIO()
    deck.save(out)
    return out.getvalue()


def make_xlsx() -> bytes:
    import openpyxl

    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Staff"
    for row in [("Name", "Role", "Office"), ("Ada Okafor", "harbour master", "Tower B"), ("Li Wei", "pilot", "Quay 3")]:
        sheet.append(row)
    other = book.create_sheet("Boats")
    for row in [("Boat", "Length (m)"), ("Seagull", 12), ("Osprey", 30)]:
        other.append(row)
    book.properties.title = "Harbour registry"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


def make_epub() -> bytes:
    from ebooklib import epub

    book = epub.EpubBook()
    book.set_identifier("rag-test-epub")
    book.set_title("Tales of the Coast")
    book.set_language("en")
    chapters = []
    for number, (heading, body) in enumerate(
        [
            ("The Storm", "The storm of 1911 sank three fishing boats off the cape."),
            ("The Rescue", "A rowing crew of six saved the keeper's family from the rocks."),
        ],
        start=1,
    ):
        chapter = epub.EpubHtml(title=heading, file_name=f"ch{number}.xhtml", lang="en")
        chapter.content = f"<html><body><h1>{heading}</h1><p>{body}</p></body></html>"
        book.add_item(chapter)
        chapters.append(chapter)
    book.toc = chapters
    book.spine = chapters
    book.add_item(epub.EpubNcx())
    book.add_item(epub.EpubNav())
    out = io.BytesIO()
    epub.write_epub(out, book)
    return out.getvalue()


PAGE_HTML = """<!doctype html><html><head><title>Harbour news</title></head><body>
<nav><a href="/">Home</a> &gt; <a href="/news">News</a> &gt; Harbour</nav>
<article><h1>Harbour opens a new marina</h1>
<p>The new marina at the north quay opened on Saturday with berths for two hundred yachts.
The harbour authority says the marina took two years to build and cost nine million.</p>
<p>Boat owners can book a berth online or at the harbour office, which is open every weekday.</p>
<h2>Prices</h2>
<table><tr><th>Berth</th><th>Price per night</th></tr><tr><td>Small yacht</td><td>30 euros</td></tr>
<tr><td>Large yacht</td><td>75 euros</td></tr></table>
<p>Prices include water and electricity at every berth, and showers in the marina building.</p></article>
<footer>Copyright Harbour Authority. Contact us. Privacy policy. Cookie settings.</footer>
</body></html>"""


def folder_of_every_kind(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.pdf").write_bytes(
        make_pdf(PDF_PAGES, title="Harbour Annual Report 2024", bookmarks={0: "Overview", 1: "Lighthouse"})
    )
    (folder / "ferries.docx").write_bytes(make_docx())
    (folder / "plan.pptx").write_bytes(make_pptx())
    (folder / "registry.xlsx").write_bytes(make_xlsx())
    (folder / "tales.epub").write_bytes(make_epub())
    (folder / "marina.html").write_text(PAGE_HTML, encoding="utf-8")
    (folder / "locked.pdf").write_bytes(make_pdf(["A secret page."], password="letmein"))
    (folder / "notes.pdf").write_text("<html><body><h1>Tide notes</h1><p>High tide is at noon.</p></body></html>")
    (folder / "scanned-name.txt").write_bytes(make_pdf(["A PDF named like a text file speaks of cormorants."]))
    (folder / "broken.docx").write_bytes(b"PK\x03\x04 not really a zip")
    (folder / "data.json").write_text('{"not": "a document"}')
    return folder


# --------------------------------------------------------------------------- telling the kind


@pytest.mark.parametrize(
    ("raw", "suffix", "kind"),
    [
        (b"%PDF-1.7\n...", ".txt", "pdf"),
        (b"<!DOCTYPE html><html><body>x</body></html>", ".pdf", "html"),
        (b"  <html lang='en'><p>x</p></html>", ".txt", "html"),
        (b"plain words", ".md", "markdown"),
        (b"a,b\n1,2\n", ".csv", "csv"),
        (b"\x89PNG\r\n\x1a\n\x00\x00", ".jpg", "image"),
        (b"plain words", ".txt", "text"),
    ],
)
def test_the_kind_is_told_by_content_before_extension(raw, suffix, kind):
    assert kind_of(raw, suffix) == kind


@pytest.mark.parametrize(
    ("raw", "suffix", "message"),
    [
        (b"plain words", ".pdf", "not a valid PDF"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 100, ".doc", "save it as .docx"),
        (b"{}", ".json", "unsupported type (.json)"),
        (b"hello", "", "unsupported type (no extension)"),
    ],
)
def test_a_kind_no_converter_reads_is_named(raw, suffix, message):
    with pytest.raises(ConversionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        kind_of(raw, suffix)


# --------------------------------------------------------------------------- each converter


def test_pdf_text_per_page_with_bookmarks_as_sections_and_metadata_title(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "report.pdf").write_bytes(make_pdf(PDF_PAGES, "Harbour Annual Report 2024", {0: "Overview", 2: "Money"}))
    (doc,), errors = load_corpus(folder)
    assert errors == []
    assert doc.kind == "pdf" and doc.title == "Harbour Annual Report 2024"
    assert [page for _, page in doc.pages] == [1, 2, 3]
    at = doc.text.index("Its lamp")
    assert locate(doc.pages, at) == 2
    assert locate(doc.sections, at) == "Overview"  # page 2 has no bookmark: still in page 1's section
    assert locate(doc.sections, doc.text.index("mooring fees")) == "Money"
    if CJK_FONT.exists():
        assert "灯塔由本地工匠建造" in doc.text


def test_a_pdf_without_its_own_title_is_named_by_its_first_line(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.pdf").write_bytes(
        make_pdf(["Quarterly Figures\nRevenue rose."], title="Microsoft Word - x.docx")
    )
    (doc,), _ = load_corpus(tmp_path / "c")
    assert doc.title == "Quarterly Figures"


def test_docx_headings_become_sections_and_tables_rows(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "f.docx").write_bytes(make_docx())
    (doc,), _ = load_corpus(tmp_path / "c")
    assert doc.title == "Ferry Timetable"
    at = doc.text.index("The night ferry")
    assert locate(doc.sections, at) == "Services › Night ferry"
    assert locate(doc.sections, doc.text.index("except Christmas")) == "Services"
    assert "Route: Pine Island, Fare: 8 euros" in doc.text.split("\n\n")
    assert doc.pages == ()


def test_pptx_slides_are_pages_with_their_notes(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "p.pptx").write_bytes(make_pptx())
    (doc,), _ = load_corpus(tmp_path / "c")
    assert doc.title == "Roadmap"  # no title in the file's properties: the first slide's
    at = doc.text.index("glass roof")
    assert locate(doc.pages, at) == 2 and locate(doc.sections, at) == "Budget"
    assert locate(doc.pages, doc.text.index("thank the council")) == 1
    assert "Figures are in euros." in doc.text


def test_xlsx_rows_read_as_header_value_pairs_with_the_sheet_as_page(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "r.xlsx").write_bytes(make_xlsx())
    (doc,), _ = load_corpus(tmp_path / "c")
    assert doc.title == "Harbour registry"
    blocks = doc.text.split("\n\n")
    assert "Name: Li Wei, Role: pilot, Office: Quay 3" in blocks
    assert "Boat: Osprey, Length (m): 30" in blocks
    assert locate(doc.pages, doc.text.index("Osprey")) == "Boats"
    assert locate(doc.pages, doc.text.index("Ada Okafor")) == "Staff"


def test_csv_rows_read_as_header_value_pairs(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "t.csv").write_text("city;population\nShanghai;24870895\nHefei;9369881\n", encoding="utf-8")
    (doc,), _ = load_corpus(tmp_path / "c")
    assert doc.text.split("\n\n") == ["city: Shanghai, population: 24870895", "city: Hefei, population: 9369881"]


def test_epub_chapters_in_reading_order_with_headings_as_sections(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "b.epub").write_bytes(make_epub())
    (doc,), errors = load_corpus(tmp_path / "c")
    assert errors == []
    assert doc.title == "Tales of the Coast"
    assert doc.text.index("storm of 1911") < doc.text.index("rowing crew")
    assert locate(doc.sections, doc.text.index("rowing crew")) == "The Rescue"


def test_html_keeps_the_main_content_and_tables_as_rows_and_drops_navigation(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "m.html").write_text(PAGE_HTML, encoding="utf-8")
    (doc,), _ = load_corpus(tmp_path / "c")
    assert doc.title in ("Harbour opens a new marina", "Harbour news")
    blocks = doc.text.split("\n\n")
    assert "Berth: Large yacht, Price per night: 75 euros" in blocks
    assert "Privacy policy" not in doc.text and "Home" not in doc.text
    assert locate(doc.sections, doc.text.index("Large yacht")).endswith("Prices")


def test_markdown_headings_are_sections_but_not_inside_code_blocks(tmp_path):
    (tmp_path / "c").mkdir()
    text = (
        "# Guide\n\nIntro.\n\n## Install\n\n```sh\n# not a heading\npip install x\n```\n\n"
        "Setup text.\n\nUsage\n-----\n\nRun it.\n"
    )
    (tmp_path / "c" / "g.md").write_text(text, encoding="utf-8")
    (doc,), _ = load_corpus(tmp_path / "c")
    assert doc.text == text  # Markdown is shown as written
    assert [path for _, path in doc.sections] == ["Guide", "Guide › Install", "Guide › Usage"]
    assert locate(doc.sections, text.index("Setup text")) == "Guide › Install"


def test_every_file_is_indexed_or_skipped_with_a_reason(tmp_path):
    _, errors = load_corpus(folder_of_every_kind(tmp_path / "c"))
    reasons = {e.doc_id: e.reason for e in errors}
    assert set(reasons) == {"locked.pdf", "broken.docx", "data.json"}
    assert reasons["locked.pdf"].startswith("encrypted")
    assert reasons["broken.docx"].startswith("damaged zip")
    assert reasons["data.json"].startswith("unsupported type (.json)")


def test_a_missing_library_skips_its_files_with_the_install_command(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pdfium(name, *args, **kwargs):
        if name.startswith("pypdfium2"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "r.pdf").write_bytes(make_pdf(["Some text on a page."]))
    (tmp_path / "c" / "ok.txt").write_text("Still indexed.")
    monkeypatch.setattr(builtins, "__import__", no_pdfium)
    docs, errors = load_corpus(tmp_path / "c")
    assert [d.doc_id for d in docs] == ["ok.txt"]
    assert errors[0].reason == "PDF support is not installed: pip install 'rag[pdf]' (or 'rag[all]')"


# --------------------------------------------------------------------------- end to end: cited page and section


@pytest.fixture
def every_kind_assistant(settings, embedder, tmp_path):
    folder = folder_of_every_kind(tmp_path / "every-kind")
    # The fake embedder's evidence for a table row runs lower than for prose (0.006-0.009): these
    # tests check where a quote is cited from, not the judge's calibration (tests/test_judge*.py).
    settings = settings.with_(corpus_dir=folder, index_dir=tmp_path / "every-index", abstain_threshold=0.004)
    assistant = Assistant(settings, embedder)
    report = assistant.refresh()
    assert {e.doc_id for e in report.skipped} == {"locked.pdf", "broken.docx", "data.json"}
    return assistant


@pytest.mark.parametrize(
    ("question", "doc_id", "fact", "page", "section", "title"),
    [
        (
            "When was the lighthouse on Gull Point finished?",
            "report.pdf",
            "March",
            2,
            "Lighthouse",
            "Harbour Annual Report 2024",
        ),
        (
            "When does the night ferry to Pine Island leave?",
            "ferries.docx",
            "23:40",
            None,
            "Services › Night ferry",
            "Ferry Timetable",
        ),
        ("Who donated the glass roof?", "plan.pptx", "local firm", 2, "Budget", "Roadmap"),
        ("Which office is the pilot Li Wei in?", "registry.xlsx", "Quay 3", "Staff", "Staff", "Harbour registry"),
        (
            "How many fishing boats did the storm of 1911 sink?",
            "tales.epub",
            "three",
            None,
            "The Storm",
            "Tales of the Coast",
        ),
        ("How much does a large yacht berth cost per night?", "marina.html", "75 euros", None, "Prices", None),
        ("When is high tide?", "notes.pdf", "noon", None, "Tide notes", "Tide notes"),
    ],
)
def test_a_question_about_each_kind_cites_its_page_and_section(
    every_kind_assistant, question, doc_id, fact, page, section, title
):
    answer = every_kind_assistant.ask(question)
    assert not answer.abstained, answer.answer
    first = answer.citations[0]
    assert first.doc_id == doc_id and fact in answer.answer
    assert first.page == page
    assert (first.section or "").endswith(section)
    if title:
        assert first.title == title
    data = answer.to_json()["citations"][0]
    assert ("page" in data) == (page is not None) and data.get("page") == page


def test_an_unchanged_pdf_is_not_converted_again_when_another_file_changes(settings, embedder, tmp_path, monkeypatch):
    import rag.formats.pdf as pdf_module
    from rag.indexing import refresh_index

    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "report.pdf").write_bytes(make_pdf(PDF_PAGES))
    (folder / "notes.txt").write_text("The first version of the notes.", encoding="utf-8")
    calls = []
    real = pdf_module.convert_pdf
    monkeypatch.setattr(pdf_module, "convert_pdf", lambda *a, **k: calls.append(1) or real(*a, **k))
    settings = settings.with_(corpus_dir=folder, index_dir=tmp_path / "idx")
    refresh_index(settings, embedder)
    (folder / "notes.txt").write_text("The second version of the notes.", encoding="utf-8")
    report = refresh_index(settings, embedder)
    assert report.updated == ["notes.txt"] and "report.pdf" in report.unchanged
    assert len(calls) == 1  # read once, on the first refresh; the second took it from the cache
    (folder / "report.pdf").write_bytes(make_pdf([*PDF_PAGES, "A fourth page."]))
    assert refresh_index(settings, embedder).updated == ["report.pdf"] and len(calls) == 2


def test_a_converter_library_failing_on_one_file_skips_only_that_file(tmp_path, monkeypatch):
    import rag.formats.office as office

    def broken(raw):
        raise KeyError("word/styles.xml")  # what a library raises on a file it half understands

    monkeypatch.setattr(office, "convert_docx", broken)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "f.docx").write_bytes(make_docx())
    (tmp_path / "c" / "ok.txt").write_text("Still indexed.")
    docs, errors = load_corpus(tmp_path / "c")
    assert [d.doc_id for d in docs] == ["ok.txt"]
    assert errors[0].doc_id == "f.docx" and errors[0].reason == "could not be converted (KeyError: 'word/styles.xml')"


def test_a_web_page_is_read_whole_when_trafilatura_cannot_be_imported(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_trafilatura(name, *args, **kwargs):
        if name == "trafilatura":
            raise ImportError("lxml.html.clean module is now a separate project")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_trafilatura)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "m.html").write_text(PAGE_HTML, encoding="utf-8")
    (doc,), _ = load_corpus(tmp_path / "c")
    assert "Berth: Large yacht, Price per night: 75 euros" in doc.text.split("\n\n")
