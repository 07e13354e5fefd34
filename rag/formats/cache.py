"""Conversion cache: a binary document converted once per content, not on every refresh.

Every refresh reads each file again to learn whether it changed (its sha256); without this, an
unchanged PDF or Office file would also be parsed again each time, so editing one text file
would re-read a whole folder of PDFs. Entries are keyed by the file's content hash, its kind, the
OCR languages and CONVERTER_VERSION, and written atomically; a damaged entry is converted again.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from rag.formats import Converted

# Bump when a converter's output changes, so cached conversions are made again.
CONVERTER_VERSION = 1


def _path(cache_dir: Path, kind: str, sha256: str, ocr_languages: str) -> Path:
    languages = ocr_languages.replace("+", "_") or "default"
    return cache_dir / "converted" / f"{sha256}-{kind}-{languages}-v{CONVERTER_VERSION}.json"


def load(cache_dir: Path, kind: str, sha256: str, ocr_languages: str) -> Converted | None:
    try:
        data = json.loads(_path(cache_dir, kind, sha256, ocr_languages).read_text(encoding="utf-8"))
        return Converted(
            data["text"],
            data["title"],
            tuple((o, p) for o, p in data["pages"]),
            tuple((o, s) for o, s in data["sections"]),
            data["ocr_pages"],
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(cache_dir: Path, kind: str, sha256: str, ocr_languages: str, converted: Converted) -> None:
    path = _path(cache_dir, kind, sha256, ocr_languages)
    data = {
        "text": converted.text,
        "title": converted.title,
        "pages": [list(mark) for mark in converted.pages],
        "sections": [list(mark) for mark in converted.sections],
        "ocr_pages": converted.ocr_pages,
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, ensure_ascii=False)
        os.replace(tmp, path)
    except OSError:  # a read-only or full cache costs time on the next refresh, never the document
        try:
            os.unlink(tmp)
        except (OSError, UnboundLocalError):
            pass
