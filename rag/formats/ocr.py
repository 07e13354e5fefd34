"""OCR: text for scanned PDF pages and images, read by Tesseract and cached by content hash.

Each page's text and its words' boxes are kept in `<cache dir>/ocr/<sha256>.json`, keyed by the
file's bytes, the page and the languages read with, so indexing again (which converts every file)
never reads an unchanged page twice. Trade-off: a PDF that changes at all is read again whole
(keying by the PDF's bytes, not by each page's rendering, costs nothing on a hit; rendering every
page of a scanned book at each refresh would not).
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rag.formats import ConversionError, Converted, MissingExtra, TextBuilder

INSTALL_TESSERACT = (
    "Tesseract is not installed: on Debian/Ubuntu, apt install tesseract-ocr tesseract-ocr-eng "
    "tesseract-ocr-chi-sim tesseract-ocr-chi-tra (macOS: brew install tesseract tesseract-lang)"
)
DEFAULT_LANGUAGES = "eng+chi_sim+chi_tra"
RENDER_SCALE = 300 / 72  # PDF points to 300 dpi pixels: Tesseract's preferred resolution
# A poster-sized page at 300 dpi would need gigabytes: its long side is rendered at most this long.
MAX_RENDER_PX = 10_000
# A page Tesseract has not read in this long is given up (and its file skipped) rather than hang indexing.
TIMEOUT_S = 600
# Part of every cache key: bump it when what is cached changes (the rendering, the clean-up).
CACHE_VERSION = "2"


def _tesseract():
    try:
        import pytesseract
    except ImportError:
        raise MissingExtra("OCR", "ocr") from None
    if shutil.which(pytesseract.pytesseract.tesseract_cmd) is None:
        raise ConversionError(f"needs OCR (a scanned page or an image); {INSTALL_TESSERACT}")
    return pytesseract


@functools.lru_cache(maxsize=8)
def _installed_languages(command: str) -> frozenset[str]:
    import pytesseract

    return frozenset(pytesseract.get_languages(config=""))


def languages_to_use(wanted: str = "") -> str:
    """The languages of `wanted` (joined by +) that Tesseract has, in that order.

    All of them at once, not chosen per page. Measured with bench/ocr.py on A4 pages at 300 dpi
    (2 cores shared with other jobs, load 3-7, so each time is good to about 2x; bench/RESULTS.md):
    all three languages read a page in 3.3-7.7 s, with character accuracy 1.00 (English), 0.93
    (Simplified), 0.96 (Traditional) and 0.98 (half English, half Chinese). Looking first adds a
    pass to every page with Chinese on it: script detection (osd) then reading took 5.6-10.2 s, an
    English pass then reading 6.5-16.5 s; and osd names one script per page, so it read the
    bilingual page in English only (accuracy 0.74). Only all-English pages are faster in English
    alone (2.2-4.5 s against 3.3-6.5 s), which `ocr_languages=eng` gives a corpus of English scans.
    """
    pytesseract = _tesseract()
    installed = _installed_languages(pytesseract.pytesseract.tesseract_cmd)
    chosen = [lang for lang in (wanted or DEFAULT_LANGUAGES).split("+") if lang in installed]
    if not chosen:
        raise ConversionError(
            f"none of the OCR languages {wanted or DEFAULT_LANGUAGES!r} is installed "
            f"(installed: {'+'.join(sorted(installed)) or 'none'}); {INSTALL_TESSERACT}"
        )
    return "+".join(chosen)


@dataclass(frozen=True)
class OcrPage:
    """What Tesseract read on one image: the cleaned text, and each word's box for highlighting."""

    text: str
    words: tuple[tuple[str, int, int, int, int], ...] = ()  # (word, left, top, right, bottom), pixels
    size: tuple[int, int] = (0, 0)  # (width, height) of the image read, which the boxes are in


def read_image(image, languages: str) -> OcrPage:
    """Tesseract's words on a PIL image with their boxes, and their text cleaned up (`clean_ocr_text`).

    The text is laid out as Tesseract's own text output is: words of a line joined by a space,
    lines by a line break, paragraphs by a blank line.
    """
    pytesseract = _tesseract()
    try:
        data = pytesseract.image_to_data(image, lang=languages, timeout=TIMEOUT_S, output_type=pytesseract.Output.DICT)
    except RuntimeError as exc:  # TesseractError (an image it cannot read), or the timeout
        raise ConversionError(f"OCR failed: {getattr(exc, 'message', '') or exc}") from exc
    parts: list[str] = []
    words = []
    previous = None
    for i, word in enumerate(data["text"]):
        if data["level"][i] != 5 or not word.strip():  # level 5: a word (the others are blocks, lines)
            continue
        line = (data["block_num"][i], data["par_num"][i], data["line_num"][i])
        if previous is not None:
            parts.append(" " if line == previous else "\n" if line[:2] == previous[:2] else "\n\n")
        parts.append(word.strip())
        previous = line
        left, top = data["left"][i], data["top"][i]
        words.append((word.strip(), left, top, left + data["width"][i], top + data["height"][i]))
    return OcrPage(clean_ocr_text("".join(parts)), tuple(words), image.size)


# --------------------------------------------------------------------------- cleaning up

_CJK = "\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
# Tesseract's Chinese models put a space between characters (and before their punctuation).
_SPACE_IN_CJK = re.compile(rf"(?<=[{_CJK}])[ \t]+(?=[{_CJK}])")
_HYPHENATED = re.compile(r"(?<=[a-z])-$")


def clean_ocr_text(text: str) -> str:
    """Tesseract's output as prose: no spaces between Chinese characters, hard-wrapped lines joined.

    A blank line stays a paragraph break. Lines are joined with nothing between Chinese characters,
    a word hyphenated at a line's end ("exam-" + "ple") is joined whole, anything else with a space.
    """
    text = _SPACE_IN_CJK.sub("", text.replace("\x0c", "\n"))
    paragraphs = []
    for block in re.split(r"\n\s*\n", text):
        joined = ""
        for line in (line.strip() for line in block.split("\n")):
            if not line:
                continue
            if not joined:
                joined = line
            elif re.match(rf"[{_CJK}]", joined[-1]) and re.match(rf"[{_CJK}]", line[0]):
                joined += line
            elif _HYPHENATED.search(joined) and line[0].islower():
                joined = joined[:-1] + line
            else:
                joined += " " + line
        if joined:
            paragraphs.append(joined)
    return "\n\n".join(paragraphs)


# --------------------------------------------------------------------------- the cache


def cache_key(content_hash: str, page: int, languages: str) -> str:
    """The cache key of one page (0 for an image) of a file whose bytes hash to `content_hash`."""
    return hashlib.sha256(f"{content_hash}:{page}:{languages}:{RENDER_SCALE}:{CACHE_VERSION}".encode()).hexdigest()


def _cached(cache_dir: Path | None, key: str) -> OcrPage | None:
    if cache_dir is None:
        return None
    try:
        data = json.loads((cache_dir / "ocr" / f"{key}.json").read_text(encoding="utf-8"))
        return OcrPage(data["text"], tuple(tuple(w) for w in data["words"]), tuple(data["size"]))
    except (OSError, ValueError, KeyError, TypeError):  # absent, or damaged: read the page again
        return None


def _store(cache_dir: Path | None, key: str, page: OcrPage) -> None:
    """Write atomically (a temporary file, then a rename), so a reader never sees half a page."""
    if cache_dir is None:
        return
    folder = cache_dir / "ocr"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{key[:16]}-", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"text": page.text, "words": page.words, "size": page.size}, fh, ensure_ascii=False)
            os.replace(tmp, folder / f"{key}.json")
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as exc:  # a read-only or full cache costs time next run, never this file's text
        print(f"rag: warning: cannot cache OCR text in {folder}: {exc.strerror or exc}", file=sys.stderr)


def cached_page(content_hash: str, page: int, languages: str, cache_dir: Path | None) -> OcrPage | None:
    """What OCR read on `page` (0-based) of the file hashing to `content_hash`, if it is cached."""
    try:
        return _cached(cache_dir, cache_key(content_hash, page, languages_to_use(languages)))
    except ConversionError:  # Tesseract or its languages are gone: nothing was read with them
        return None


def read_pages(
    pages: list[int],
    render: Callable[[int], object],
    content_hash: str,
    languages: str = "",
    cache_dir: Path | None = None,
    name: str = "",
) -> dict[int, str]:
    """The OCR text of each of `pages`, from the cache, else rendered (`render(page)` -> PIL image) and read.

    Shows a progress bar on stderr per page read, naming the file.
    """
    languages = languages_to_use(languages)
    keys = {page: cache_key(content_hash, page, languages) for page in pages}
    texts = {page: found.text for page in pages if (found := _cached(cache_dir, keys[page])) is not None}
    todo = [page for page in pages if page not in texts]
    if not todo:
        return texts
    from tqdm import tqdm

    with tqdm(total=len(todo), desc=f"OCR {name}".strip(), unit="page", file=sys.stderr, leave=False) as bar:
        for page in todo:
            read = read_image(render(page), languages)
            _store(cache_dir, keys[page], read)
            texts[page] = read.text
            bar.update(1)
    return texts


# --------------------------------------------------------------------------- converters


def ocr_pdf_pages(
    pdf, raw: bytes, numbers: list[int], languages: str = "", cache_dir: Path | None = None, name: str = ""
) -> dict[int, str]:
    """The OCR text of the given (0-based) pages of an open pypdfium2 document whose bytes are `raw`."""

    def render(number: int):
        page = pdf[number]
        scale = min(RENDER_SCALE, MAX_RENDER_PX / max(page.get_size()))
        return page.render(scale=scale, grayscale=True).to_pil()

    return read_pages(
        numbers,
        render,
        hashlib.sha256(raw).hexdigest(),
        languages,
        cache_dir,
        name,
    )


def convert_image(raw: bytes, languages: str = "", cache_dir: Path | None = None, name: str = "") -> Converted:
    """An image read by OCR; each frame of a multi-page TIFF is a page."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ConversionError("damaged image (it cannot be decoded)") from exc
    except Image.DecompressionBombError as exc:  # Pillow's guard against images that fill memory
        raise ConversionError(f"image too large to read ({exc})") from exc

    def frame(number: int):
        image.seek(number)
        return image.copy()

    frames = list(range(getattr(image, "n_frames", 1)))
    texts = read_pages(frames, frame, hashlib.sha256(raw).hexdigest(), languages, cache_dir, name)
    builder = TextBuilder()
    for number in frames:
        builder.page(number + 1)
        builder.block(texts[number])
    return builder.build(ocr_pages=len(frames))
