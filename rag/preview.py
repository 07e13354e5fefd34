"""Preview: one page of an indexed PDF as a PNG, with the quoted sentences highlighted on it.

The quote's offsets index the converted document's text, which joins pages with blank lines and
unifies line breaks; rather than store a map back to PDFium's character indices, the quoted text
is found again in the page's text layer, ignoring whitespace, and drawn from the character boxes
PDFium gives for that range; on a page read by OCR, which has no text layer, it is found among
the words Tesseract read (kept in the OCR cache) and their boxes are drawn. Trade-offs: a sentence
that occurs twice on a page is highlighted where it first occurs; on an OCR'd page whole words
are highlighted. Only documents in the index's manifest, unchanged since indexing, are opened.
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
from rag.formats.ocr import OcrPage, cached_page

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
    ocr_languages: str = "",
    ocr_cache_dir: Path | None = None,
) -> PagePreview | None:
    """The page of `doc_id` holding its first quoted span, with the quotes on that page highlighted.

    `documents` is the index's manifest entry per document; `text` the document's indexed text, which
    `spans` index. None when there is nothing to show: not an indexed PDF, no page marks, no span, or
    a file changed since it was indexed (its pages may no longer hold the quote). A page read by OCR
    is highlighted from what OCR read, found in `ocr_cache_dir` with the `ocr_languages` it was read in.
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
    ocr_page = None
    if ocr_cache_dir is not None:
        ocr_page = cached_page(meta["sha256"], page - 1, ocr_languages, ocr_cache_dir)
    return render_page(raw, page, quotes, ocr_page=ocr_page)


def _kind(raw: bytes) -> str:
    try:
        return kind_of(raw, ".pdf")
    except ValueError:
        return ""


def render_page(
    raw: bytes, page: int, quotes: Sequence[str] = (), scale: float = RENDER_SCALE, ocr_page: OcrPage | None = None
) -> PagePreview:
    """Page `page` (1-based) of the PDF in `raw` as a PNG, each of `quotes` found on it highlighted.

    A quote is looked for in the page's text layer, then among the words of `ocr_page` (what OCR read).
    """
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
            if where is not None:
                start, end = where
                boxes = [textpage.get_rect(i) for i in range(textpage.count_rects(start, end - start))]
                rects = [
                    (left * scale, (height - top) * scale, right * scale, (height - bottom) * scale)
                    for left, bottom, right, top in boxes
                ]
            elif ocr_page is not None and ocr_page.size[0]:
                ratio = image.width / ocr_page.size[0]  # OCR read the page at another scale
                rects = [tuple(v * ratio for v in box) for box in word_boxes(ocr_page, quote)]
            else:
                rects = []
            found += bool(rects)
            for rect in rects:
                draw.rectangle(list(rect), fill=HIGHLIGHT)
    finally:
        pdf.close()
    out = io.BytesIO()
    Image.alpha_composite(image, overlay).convert("RGB").save(out, format="PNG", optimize=True)
    return PagePreview(page, out.getvalue(), found)


def word_boxes(ocr_page: OcrPage, quote: str) -> list[tuple[int, int, int, int]]:
    """The boxes (left, top, right, bottom) of the words OCR read that hold `quote`, whitespace ignored."""
    target = _SPACE.sub("", quote)
    squeezed, owner = [], []
    for n, (word, *_) in enumerate(ocr_page.words):
        squeezed.append(word)
        owner.extend([n] * len(word))
    at = "".join(squeezed).find(target) if target else -1
    if at < 0:
        return []
    merged: list[list[int]] = []
    for n in sorted(set(owner[at : at + len(target)])):
        left, top, right, bottom = ocr_page.words[n][1:]
        last = merged[-1] if merged else None
        if last and left >= last[0] and top < last[3] and bottom > last[1]:  # the same line: one box
            last[1:] = [min(last[1], top), max(last[2], right), max(last[3], bottom)]
        else:
            merged.append([left, top, right, bottom])
    return [tuple(box) for box in merged]


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
