"""Preview: one page of an indexed PDF as a PNG, with the quoted sentences highlighted on it.

The quote's offsets index the converted document's text, which joins pages with blank lines and
unifies line breaks; rather than store a map back to PDFium's character indices, the quoted text
is found again in the page's text layer, ignoring whitespace, and drawn from the character boxes
PDFium gives for that range. Trade-off: a sentence that occurs twice on a page is highlighted
where it first occurs; a page read by OCR has no text layer, so it is shown without highlight.
Only documents in the index's manifest, unchanged since indexing, are opened.
"""

from __future__ import annotations

import hashlib
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rag.documents import MAX_DOCUMENT_BYTES, locate
from rag.formats import kind_of

RENDER_SCALE = 1.5  # PDF points to pixels: an A4 page 893 px wide, sharp in the viewer's column
HIGHLIGHT = (250, 204, 21, 96)  # translucent yellow (RGBA), the sources panel's <mark> colour


@dataclass(frozen=True)
class PagePreview:
    page: int  # 1-based
    png: bytes
    highlighted: int  # quoted sentences found and drawn on the page


def page_preview(
    documents: dict[str, dict],
    corpus_dir: Path,
    doc_id: str,
    text: str,
    spans: Sequence[tuple[int, int]],
    max_bytes: int = MAX_DOCUMENT_BYTES,
) -> PagePreview | None:
    """The page of `doc_id` holding its first quoted span, with the quotes on that page highlighted.

    `documents` is the index's manifest entry per document; `text` the document's indexed text, which
    `spans` index. None when there is nothing to show: not an indexed PDF, no page marks, no span, or
    a file changed since it was indexed (its pages may no longer hold the quote).
    """
    meta = documents.get(doc_id)
    if meta is None or not meta.get("pages") or not spans:
        return None
    first = min(spans)
    page = locate(meta["pages"], first[0])
    if not isinstance(page, int):
        return None
    try:
        with open(corpus_dir / doc_id, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except OSError:
        return None
    if len(raw) > max_bytes or hashlib.sha256(raw).hexdigest() != meta.get("sha256") or _kind(raw) != "pdf":
        return None
    quotes = [text[s:e] for s, e in spans if locate(meta["pages"], s) == page]
    return render_page(raw, page, quotes)


def _kind(raw: bytes) -> str:
    try:
        return kind_of(raw, ".pdf")
    except ValueError:
        return ""


def render_page(raw: bytes, page: int, quotes: Sequence[str] = (), scale: float = RENDER_SCALE) -> PagePreview:
    """Page `page` (1-based) of the PDF in `raw` as a PNG, each of `quotes` found on it highlighted."""
    import pypdfium2 as pdfium
    from PIL import Image, ImageDraw

    pdf = pdfium.PdfDocument(raw)
    try:
        pdf_page = pdf[page - 1]
        height = pdf_page.get_height()
        image = pdf_page.render(scale=scale).to_pil().convert("RGBA")
        textpage = pdf_page.get_textpage()
        chars = textpage.get_text_range(0, textpage.count_chars())
        overlay = Image.new("RGBA", image.size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        found = 0
        for quote in quotes:
            where = find_ignoring_space(chars, quote)
            if where is None:
                continue
            found += 1
            start, end = where
            for i in range(textpage.count_rects(start, end - start)):
                left, bottom, right, top = textpage.get_rect(i)
                draw.rectangle(
                    [left * scale, (height - top) * scale, right * scale, (height - bottom) * scale], fill=HIGHLIGHT
                )
    finally:
        pdf.close()
    out = io.BytesIO()
    Image.alpha_composite(image, overlay).convert("RGB").save(out, format="PNG", optimize=True)
    return PagePreview(page, out.getvalue(), found)


_SPACE = re.compile(r"\s")


def find_ignoring_space(haystack: str, needle: str) -> tuple[int, int] | None:
    """[start, end) of `needle` in `haystack` when whitespace is ignored in both; None if absent.

    PDFium's text has line breaks (and, between some words, generated spaces) where the indexed
    text may differ, so the match is made on the other characters and mapped back.
    """
    target = _SPACE.sub("", needle)
    if not target:
        return None
    positions = [i for i, ch in enumerate(haystack) if not _SPACE.match(ch)]
    squeezed = "".join(haystack[i] for i in positions)
    at = squeezed.find(target)
    if at < 0:
        return None
    return positions[at], positions[at + len(target) - 1] + 1
