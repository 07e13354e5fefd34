"""Markdown: the text as written (quotes show it as the author did), with its heading path as sections."""

from __future__ import annotations

import re

from rag.formats import SECTION_SEPARATOR, Converted

_ATX = re.compile(r"^ {0,3}(#{1,6})[ \t]+(.+?)[ \t#]*$", re.M)
_SETEXT = re.compile(r"^ {0,3}(\S[^\n]*)\n {0,3}(=+|-+)[ \t]*$", re.M)
_FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1", re.M | re.S)


def convert_markdown(text: str) -> Converted:
    fenced = [(m.start(), m.end()) for m in _FENCE.finditer(text)]
    found = [(m.start(), len(m.group(1)), m.group(2)) for m in _ATX.finditer(text)]
    found += [(m.start(), 1 if m.group(2)[0] == "=" else 2, m.group(1)) for m in _SETEXT.finditer(text)]
    open_path: list[tuple[int, str]] = []
    sections = []
    for start, level, heading in sorted(found):
        if any(a <= start < b for a, b in fenced):  # a "# comment" in a code block is not a heading
            continue
        heading = re.sub(r"\s+", " ", heading).strip()
        while open_path and open_path[-1][0] >= level:
            open_path.pop()
        open_path.append((level, heading))
        sections.append((start, SECTION_SEPARATOR.join(h for _, h in open_path)))
    title = next((h for _, level, h in sorted(found) if level == 1), "") or (found and min(found)[2]) or ""
    return Converted(text, title.strip() if isinstance(title, str) else "", (), tuple(sections))
