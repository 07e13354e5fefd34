"""PDF: text per page in reading order (PDFium), bookmarks as sections, OCR for pages with no text layer."""

from __future__ import annotations

from pathlib import Path

from rag.formats import ConversionError, Converted, MissingExtra, TextBuilder

# A page with fewer characters than this in its text layer (a page number, a stray mark) and with
# an image on it is treated as scanned.
SCANNED_PAGE_CHARS = 16


def convert_pdf(raw: bytes, ocr_languages: str = "", *, ocr_cache_dir: Path | None = None, name: str = "") -> Converted:
    try:
        import pypdfium2 as pdfium
    except ImportError:
        raise MissingExtra("PDF", "pdf") from None
    try:
        pdf = pdfium.PdfDocument(raw)
    except pdfium.PdfiumError as exc:
        message = str(exc)
        if "password" in message.lower():
            raise ConversionError("encrypted (password-protected) PDF: save an unprotected copy to index it") from exc
        raise ConversionError(f"damaged PDF ({message.removeprefix('Failed to load document ')})") from exc
    try:
        bookmarks = _bookmarks(pdf)
        builder = TextBuilder()
        scanned: list[int] = []
        texts: dict[int, str] = {}
        for number in range(len(pdf)):
            page = pdf[number]
            text = page.get_textpage().get_text_bounded().replace("\r\n", "\n").replace("\r", "\n")
            if len(text.strip()) < SCANNED_PAGE_CHARS and _has_image(page):
                scanned.append(number)
            texts[number] = text
        if scanned:
            from rag.formats.ocr import ocr_pdf_pages

            texts.update(ocr_pdf_pages(pdf, raw, scanned, ocr_languages, ocr_cache_dir, name))
        for number in range(len(pdf)):
            if number in bookmarks:
                builder.section(bookmarks[number])
            builder.page(number + 1)
            builder.block(texts[number])
        title = (pdf.get_metadata_dict().get("Title") or "").strip()
    finally:
        pdf.close()
    return builder.build(_own_title(title), ocr_pages=len(scanned))


def _bookmarks(pdf) -> dict[int, str]:
    """The outline's entries by the page they point at: the last top-level-most entry on each page."""
    found: dict[int, tuple[int, str]] = {}
    try:
        for mark in pdf.get_toc(max_depth=3):
            dest = mark.get_dest()
            index = dest.get_index() if dest is not None else None
            title = (mark.get_title() or "").strip()
            if index is None or not title:
                continue
            if index not in found or mark.level <= found[index][0]:
                found[index] = (mark.level, title)
    except Exception:  # noqa: BLE001 - a damaged outline loses sections, never the text
        return {}
    return {index: title for index, (_, title) in found.items()}


def _has_image(page) -> bool:
    import pypdfium2.raw as pdfium_c

    return any(obj.type == pdfium_c.FPDF_PAGEOBJ_IMAGE for obj in page.get_objects(max_depth=2))


def _own_title(title: str) -> str:
    """Metadata titles are often the authoring tool's defaults: those are not the document's title."""
    lowered = title.lower()
    if not title or lowered in ("untitled", "untitled document", "title") or lowered.startswith("microsoft word - "):
        return ""
    if lowered.endswith((".doc", ".docx", ".pdf", ".ppt", ".pptx", ".tex", ".dvi", ".txt")):
        return ""
    return title
