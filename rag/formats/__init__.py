"""Formats: which kind of document a file is, and the converters that turn each kind into text.

A converter yields the document's text with its structure: where each page starts (a PDF page, a
slide, a spreadsheet's sheet), where each section starts (its heading path), and the document's
own title. Blocks (paragraphs, headings, table rows, pages) are joined by a blank line, which
always ends a sentence, so a quote never runs from one page or table row into the next.

The kind is told by content first (a `.pdf` that is really HTML is read as HTML; a PDF named
`.txt` is read as a PDF), then by the file's extension. The libraries for binary formats are
optional extras, imported only when such a file is read; a missing one skips the file with the
command that installs it.
"""

from __future__ import annotations

import io
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

Page = int | str  # a 1-based page or slide number, or a sheet's name


class ConversionError(ValueError):
    """A file could not be turned into text; the message says why and, where it can, what to do."""


class MissingExtra(ConversionError):
    """The library for this format is not installed."""

    def __init__(self, kind: str, extra: str) -> None:
        super().__init__(f"{kind} support is not installed: pip install 'rag[{extra}]' (or 'rag[all]')")


@dataclass(frozen=True)
class Converted:
    text: str
    title: str = ""  # the document's own title (metadata, <title>, first heading); "" when it has none
    pages: tuple[tuple[int, Page], ...] = ()  # (offset into text, page) where each page starts
    sections: tuple[tuple[int, str], ...] = ()  # (offset into text, heading path) where each section starts
    ocr_pages: int = 0  # pages (or images) whose text came from OCR


SECTION_SEPARATOR = " › "


@dataclass
class TextBuilder:
    """Builds a converted document block by block, keeping the offsets of its pages and sections."""

    parts: list[str] = field(default_factory=list)
    length: int = 0
    pages: list[tuple[int, Page]] = field(default_factory=list)
    sections: list[tuple[int, str]] = field(default_factory=list)
    _headings: list[tuple[int, str]] = field(default_factory=list)  # the open heading path: (level, text)
    _pending_page: Page | None = None

    def page(self, label: Page) -> None:
        """The next block starts a new page (an empty page leaves no mark)."""
        self._pending_page = label

    def heading(self, text: str, level: int = 1) -> None:
        text = _one_line(text)
        if not text:
            return
        while self._headings and self._headings[-1][0] >= level:
            self._headings.pop()
        self._headings.append((level, text))
        self.block(text)
        self.sections.append((self.length - len(text), SECTION_SEPARATOR.join(h for _, h in self._headings)))

    def section(self, path: str) -> None:
        """The next block starts a section known by name only (a PDF bookmark, an EPUB chapter)."""
        self._headings = [(1, path)] if path else []
        self.sections.append((self.length + (2 if self.length else 0), path))

    def block(self, text: str) -> None:
        text = text.strip()
        if not text:
            return
        if self.length:
            self.parts.append("\n\n")
            self.length += 2
        if self._pending_page is not None:
            self.pages.append((self.length, self._pending_page))
            self._pending_page = None
        self.parts.append(text)
        self.length += len(text)

    def row(self, header: list[str], values: list[str]) -> None:
        """A table row as "header: value" pairs; commas, not semicolons, so it stays one sentence."""
        cells = [_one_line(v) for v in values]
        if not any(cells):
            return
        names = [_one_line(h) for h in header] + [""] * max(0, len(cells) - len(header))
        self.block(", ".join(f"{n}: {v}" if n and n != v else v for n, v in zip(names, cells) if v))

    def build(self, title: str = "", ocr_pages: int = 0) -> Converted:
        text = "".join(self.parts)
        sections = tuple((o, p) for o, p in self.sections if o < len(text))
        return Converted(text, _one_line(title), tuple(self.pages), sections, ocr_pages)


def _one_line(text: str | None) -> str:
    return re.sub(r"\s+", " ", text or "").strip()


# --------------------------------------------------------------------------- telling the kind

TEXT_KINDS = ("text", "markdown", "html", "csv")
KIND_NAMES = {
    "text": "text",
    "markdown": "Markdown",
    "html": "HTML",
    "csv": "CSV",
    "pdf": "PDF",
    "docx": "Word (.docx)",
    "pptx": "PowerPoint (.pptx)",
    "xlsx": "Excel (.xlsx)",
    "epub": "EPUB",
    "image": "image (OCR)",
}
SUFFIXES = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".xhtml": "html",
    ".csv": "csv",
    ".tsv": "csv",
    ".pdf": "pdf",
    ".docx": "docx",
    ".pptx": "pptx",
    ".xlsx": "xlsx",
    ".xlsm": "xlsx",
    ".epub": "epub",
    ".png": "image",
    ".jpg": "image",
    ".jpeg": "image",
    ".tif": "image",
    ".tiff": "image",
    ".bmp": "image",
    ".webp": "image",
}
_LEGACY_OFFICE = {".doc": ".docx", ".ppt": ".pptx", ".xls": ".xlsx"}
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")
_ZIP_MEMBERS = {"word/document.xml": "docx", "ppt/presentation.xml": "pptx", "xl/workbook.xml": "xlsx"}
_HTML_START = re.compile(
    rb"^(?:\xef\xbb\xbf)?\s*(?:<\?xml[^>]*>\s*)?(?:<!--.*?-->\s*)*<(?:!doctype\s+html|html[\s>]|head[\s>])", re.I | re.S
)


def kind_of(raw: bytes, suffix: str) -> str:
    """The kind of document `raw` holds, by content first, then by `suffix`.

    Raises ConversionError for a type no converter reads, naming it.
    """
    suffix = suffix.lower()
    if raw[:1024].lstrip().startswith(b"%PDF-") or b"%PDF-" in raw[:1024]:
        return "pdf"
    if raw.startswith(_IMAGE_MAGIC) or (raw[:4] == b"RIFF" and raw[8:12] == b"WEBP"):
        return "image"
    if raw.startswith(b"PK\x03\x04"):
        return _zip_kind(raw, suffix)
    if raw.startswith(b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):  # OLE2: .doc, .xls, .ppt (and .msg)
        newer = _LEGACY_OFFICE.get(suffix, "a current format")
        raise ConversionError(f"an old binary Office file, which is not supported: save it as {newer}")
    if _HTML_START.match(raw[:4096]):
        return "html"
    kind = SUFFIXES.get(suffix)
    if kind in TEXT_KINDS:
        return kind
    if kind is not None:  # a binary format's extension on a file without that format's signature
        raise ConversionError(f"not a valid {KIND_NAMES[kind]} file (its content does not match its extension)")
    raise ConversionError(f"unsupported type ({suffix or 'no extension'}); supported: {supported_list()}")


def _zip_kind(raw: bytes, suffix: str) -> str:
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as zf:
            names = set(zf.namelist())
            if "mimetype" in names and zf.read("mimetype").strip() == b"application/epub+zip":
                return "epub"
    except (zipfile.BadZipFile, OSError, KeyError) as exc:
        raise ConversionError(f"damaged zip container ({exc})") from exc
    for member, kind in _ZIP_MEMBERS.items():
        if member in names:
            return kind
    raise ConversionError(f"unsupported type (a zip archive{f', {suffix}' if suffix else ''})")


def supported_list() -> str:
    return " ".join(sorted(SUFFIXES))


# --------------------------------------------------------------------------- converting


def convert_bytes(
    kind: str, raw: bytes, ocr_languages: str = "", *, ocr_cache_dir: Path | None = None, name: str = ""
) -> Converted:
    """Convert a binary format (`kind` not in TEXT_KINDS).

    Scanned pages and images are read by OCR in `ocr_languages`, their text kept in `ocr_cache_dir`
    (None: not kept); `name` names the file in OCR's progress bar.
    """
    if kind == "pdf":
        from rag.formats.pdf import convert_pdf

        return convert_pdf(raw, ocr_languages, ocr_cache_dir=ocr_cache_dir, name=name)
    if kind in ("docx", "pptx", "xlsx"):
        from rag.formats import office

        return {"docx": office.convert_docx, "pptx": office.convert_pptx, "xlsx": office.convert_xlsx}[kind](raw)
    if kind == "epub":
        from rag.formats.epub import convert_epub

        return convert_epub(raw)
    if kind == "image":
        from rag.formats.ocr import convert_image

        return convert_image(raw, ocr_languages, ocr_cache_dir, name)
    raise ValueError(f"{kind} is not a binary format")


def convert_text(kind: str, text: str) -> Converted:
    """Convert a decoded text format (`kind` in TEXT_KINDS)."""
    if kind == "html":
        from rag.formats.webpage import convert_html

        return convert_html(text)
    if kind == "csv":
        from rag.formats.table import convert_csv

        return convert_csv(text)
    if kind == "markdown":
        from rag.formats.markdown import convert_markdown

        return convert_markdown(text)
    return Converted(text)
