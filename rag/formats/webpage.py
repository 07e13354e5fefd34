"""Web pages: the main content only (trafilatura drops navigation, footers and ads), tables as rows.

On a page too short to tell main content from boilerplate, trafilatura falls back to one
paragraph of all the text; when it drops (almost) nothing, the page is read whole by
`HtmlBlocks` instead, which keeps its paragraphs, headings and rows apart. EPUB chapters (all
content by construction) are read by `HtmlBlocks` too.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

from rag.formats import Converted, TextBuilder
from rag.formats.table import add_rows

_HEADING = re.compile(r"h([1-6])$")


# trafilatura's text must be shorter than the whole page's by this share to count as having
# dropped boilerplate; else the whole page, with its structure, is the better reading.
BOILERPLATE_SHARE = 0.1


def convert_html(html: str) -> Converted:
    whole = convert_whole_html(html)
    main = _main_content(html)
    if main is None or _letters(main.text) > (1 - BOILERPLATE_SHARE) * _letters(whole.text):
        return whole
    return main


def _letters(text: str) -> int:
    return len("".join(text.split()))


def _main_content(html: str) -> Converted | None:
    try:
        import trafilatura
        from lxml import etree
    except ImportError:  # a broken install (trafilatura's lxml extras): the page is read whole
        return None

    xml = trafilatura.extract(
        html, output_format="xml", include_tables=True, include_comments=False, with_metadata=True, favor_recall=True
    )
    if not xml:
        return None
    root = etree.fromstring(xml.encode("utf-8"))
    builder = TextBuilder()
    main = root.find("main")
    for element in main if main is not None else root:
        _add_element(builder, element)
    title = root.get("title") or ""
    return builder.build(title or _first_heading(builder))


def _add_element(builder: TextBuilder, element) -> None:
    tag = element.tag
    text = "".join(element.itertext())
    if tag == "head":
        match = _HEADING.match(element.get("rend") or "")
        builder.heading(text, int(match.group(1)) if match else 2)
    elif tag == "list":
        for item in element.iter("item"):
            builder.block("".join(item.itertext()))
    elif tag == "table":
        rows = [["".join(cell.itertext()) for cell in row.iter("cell")] for row in element.iter("row")]
        rows = [r for r in rows if any(c.strip() for c in r)]
        if rows:
            add_rows(builder, rows)
    else:  # p, quote, code, and anything newer trafilatura may emit
        builder.block(text)


def _first_heading(builder: TextBuilder) -> str:
    return builder.sections[0][1] if builder.sections else ""


class HtmlBlocks(HTMLParser):
    """Every visible block of an HTML page, in order: headings, paragraphs, list items, table rows."""

    _SKIP = {"script", "style", "noscript", "template", "head", "svg"}
    _BLOCK = {
        "p", "div", "br", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article",
        "header", "footer", "nav", "aside", "main", "table", "ul", "ol", "dl", "pre", "blockquote", "figcaption",
        "caption", "hr",
    }  # fmt: skip

    def __init__(self, builder: TextBuilder) -> None:
        super().__init__(convert_charrefs=True)
        self.builder = builder
        self.title: list[str] = []
        self._text: list[str] = []
        self._skip = 0
        self._in_title = False
        self._heading = 0
        self._rows: list[list[str]] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skip += 1
        elif tag == "table":
            self._flush()
            self._rows = []
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = []
        elif tag in self._BLOCK:
            self._flush()
            match = _HEADING.match(tag)
            self._heading = int(match.group(1)) if match else 0

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in ("td", "th") and self._cell is not None and self._rows is not None:
            if not self._rows:
                self._rows.append([])
            self._rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table" and self._rows is not None:
            rows = [r for r in self._rows if any(r)]
            self._rows = None
            if rows:
                add_rows(self.builder, rows)
        elif tag in self._BLOCK:
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif self._skip:
            return
        elif self._cell is not None:
            self._cell.append(data)
        elif self._rows is None:
            self._text.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._text).split())
        self._text = []
        if self._heading:
            self.builder.heading(text, self._heading)
        else:
            self.builder.block(text)
        self._heading = 0

    def close(self) -> None:
        super().close()
        self._flush()


def convert_whole_html(html: str, builder: TextBuilder | None = None) -> Converted:
    """Every visible block of `html`; its <title>, else its first <h1>, as the title."""
    builder = builder or TextBuilder()
    parser = HtmlBlocks(builder)
    parser.feed(html)
    parser.close()
    title = " ".join("".join(parser.title).split())
    return builder.build(title or _first_heading(builder))
