"""EPUB: chapters in reading (spine) order, each chapter's heading path as its sections."""

from __future__ import annotations

import io

from rag.formats import ConversionError, Converted, MissingExtra, TextBuilder
from rag.formats.webpage import HtmlBlocks


def convert_epub(raw: bytes) -> Converted:
    try:
        import ebooklib
        from ebooklib import epub
    except ImportError:
        raise MissingExtra("EPUB", "office") from None
    try:
        book = epub.read_epub(io.BytesIO(raw), options={"ignore_ncx": True})
    except Exception as exc:  # noqa: BLE001 - ebooklib raises bare exceptions of many kinds on bad input
        raise ConversionError(f"damaged EPUB ({type(exc).__name__}: {exc})") from exc
    builder = TextBuilder()
    for item_id, _linear in book.spine:
        item = book.get_item_with_id(item_id)
        if item is None or item.get_type() != ebooklib.ITEM_DOCUMENT:
            continue
        parser = HtmlBlocks(builder)
        parser.feed(item.get_content().decode("utf-8", errors="replace"))
        parser.close()
    titles = book.get_metadata("DC", "title")
    return builder.build(titles[0][0] if titles else "")
