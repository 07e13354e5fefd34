"""Office Open XML: Word paragraphs, headings and tables; PowerPoint slides with their notes; Excel sheets.

Pages are what the format has: a slide number, a sheet's name. Word files have no pages until
they are laid out, so their quotes are placed by section (heading path) only.
"""

from __future__ import annotations

import io
import re

from rag.formats import ConversionError, Converted, MissingExtra, TextBuilder
from rag.formats.table import add_rows

_HEADING_STYLE = re.compile(r"(?:heading|标题)\s*(\d)", re.I)


def _open(loader, raw: bytes, kind: str):
    try:
        return loader(io.BytesIO(raw))
    except Exception as exc:  # noqa: BLE001 - the libraries raise KeyError, XMLSyntaxError, ... on bad input
        raise ConversionError(f"damaged {kind} file ({type(exc).__name__}: {exc})") from exc


def convert_docx(raw: bytes) -> Converted:
    try:
        import docx
        from docx.table import Table
    except ImportError:
        raise MissingExtra("Word (.docx)", "office") from None
    document = _open(docx.Document, raw, "Word (.docx)")
    builder = TextBuilder()
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            rows = [[cell.text for cell in row.cells] for row in item.rows]
            rows = [_merged(r) for r in rows if any(c.strip() for c in r)]
            if rows:
                add_rows(builder, rows)
            continue
        style = (item.style.name if item.style is not None else "") or ""
        level = _heading_level(style)
        if level:
            builder.heading(item.text, level)
        else:
            builder.block(item.text)
    return builder.build(document.core_properties.title or "")


def _heading_level(style: str) -> int:
    if style.lower() == "title":
        return 1
    match = _HEADING_STYLE.match(style)
    return int(match.group(1)) if match else 0


def _merged(row: list[str]) -> list[str]:
    """python-docx repeats a merged cell's text in every grid column it spans: keep it once."""
    out: list[str] = []
    for cell in row:
        if not out or cell != out[-1]:
            out.append(cell)
        else:
            out.append("")
    return out


def convert_pptx(raw: bytes) -> Converted:
    try:
        import pptx
    except ImportError:
        raise MissingExtra("PowerPoint (.pptx)", "office") from None
    presentation = _open(pptx.Presentation, raw, "PowerPoint (.pptx)")
    builder = TextBuilder()
    first_title = ""
    for number, slide in enumerate(presentation.slides, start=1):
        builder.page(number)
        title_shape = slide.shapes.title
        title = title_shape.text_frame.text.strip() if title_shape is not None and title_shape.has_text_frame else ""
        first_title = first_title or title
        if title:
            builder.heading(title, 1)
        else:
            builder.section("")
        for shape in sorted(slide.shapes, key=lambda s: (s.top or 0, s.left or 0)):
            if shape is title_shape:
                continue
            _add_shape(builder, shape)
        if slide.has_notes_slide:
            notes = slide.notes_slide.notes_text_frame
            if notes is not None:
                builder.block(notes.text)
    return builder.build(presentation.core_properties.title or first_title)


def _add_shape(builder: TextBuilder, shape) -> None:
    if shape.shape_type is not None and shape.shape_type == 6:  # MSO_SHAPE_TYPE.GROUP
        for inner in shape.shapes:
            _add_shape(builder, inner)
    elif getattr(shape, "has_table", False) and shape.has_table:
        rows = [[cell.text for cell in row.cells] for row in shape.table.rows]
        rows = [r for r in rows if any(c.strip() for c in r)]
        if rows:
            add_rows(builder, rows)
    elif shape.has_text_frame:
        for paragraph in shape.text_frame.paragraphs:
            builder.block("".join(run.text for run in paragraph.runs))


def convert_xlsx(raw: bytes) -> Converted:
    try:
        import openpyxl
    except ImportError:
        raise MissingExtra("Excel (.xlsx)", "office") from None
    workbook = _open(lambda fh: openpyxl.load_workbook(fh, read_only=True, data_only=True), raw, "Excel (.xlsx)")
    builder = TextBuilder()
    try:
        for sheet in workbook.worksheets:
            rows = [[_cell_text(v) for v in row] for row in sheet.iter_rows(values_only=True)]
            rows = [r for r in rows if any(r)]
            if not rows:
                continue
            builder.page(sheet.title)
            builder.section(sheet.title)
            add_rows(builder, rows)
        title = workbook.properties.title or ""
    finally:
        workbook.close()
    return builder.build(title)


def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()
