"""Tables (CSV, TSV): each row as "header: value" pairs, one block per row, so a quote is one whole row."""

from __future__ import annotations

import csv
import io

from rag.formats import Converted, TextBuilder


def convert_csv(text: str) -> Converted:
    sample = text[:8192]
    try:
        dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:  # one column, or too irregular to tell: commas
        dialect = csv.excel
    rows = [row for row in csv.reader(io.StringIO(text), dialect) if any(cell.strip() for cell in row)]
    builder = TextBuilder()
    if rows:
        add_rows(builder, rows)
    return builder.build()


def add_rows(builder: TextBuilder, rows: list[list[str]]) -> None:
    """The first row names the columns when it looks like a header (text in every cell, no numbers)."""
    header, body = rows[0], rows[1:]
    if not _looks_like_header(header) or not body:
        header, body = [], rows
    for row in body:
        builder.row(header, row)


def _looks_like_header(row: list[str]) -> bool:
    cells = [c.strip() for c in row]
    return all(cells) and not any(_is_number(c) for c in cells)


def _is_number(cell: str) -> bool:
    try:
        float(cell.replace(",", ""))
    except ValueError:
        return False
    return True
