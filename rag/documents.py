"""Documents: read every file of a folder into text (rag.formats converts each kind), decoding what real folders hold.

Text is kept as found (only line endings unified) so that chunk offsets index the text a user
sees; search-side normalisation (NFKC, whitespace, Traditional Chinese written as Simplified)
happens per chunk in `normalize`. A file that cannot be read or decoded is reported by name and
skipped; it never stops the rest (nor does a named pipe with a document's name: only regular
files are read).
Trade-off: encodings are detected first from BOMs, byte patterns and strict trial decodes: UTF-16
without a BOM by where its NUL bytes fall; text that is not UTF-8 is read as cp1252/Latin-1 when
its non-ASCII bytes mostly stand alone (accented letters), else as GB18030 (Chinese). Only what
these refuse (Big5, Cyrillic code pages), and Chinese-looking GB18030 that is really Japanese, goes
to charset-normalizer's statistical guess, which is wrong more often on short mixed text (it takes
English with a few GBK characters for Big5), so it never overrides a decode the rules accept.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import os
import re
import stat
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from rag import formats
from rag.formats import Page
from rag.formats import cache as conversion_cache

# Larger files are skipped with a reason (settings.max_document_mb, RAG_MAX_DOCUMENT_MB): indexing
# one holds its text, chunks and vectors at once, ~28x the file at the peak (bench/RESULTS.md).
MAX_DOCUMENT_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Document:
    doc_id: str  # path relative to the corpus folder, with forward slashes
    title: str
    text: str  # the text shown to users; chunk offsets index into it
    content_hash: str  # sha256 of the raw bytes: what incremental refresh compares
    stamp: tuple[int, int] | None = None  # (size, mtime_ns) of the file as read: what staleness checks compare
    kind: str = "text"  # the format it was read as (rag.formats.KIND_NAMES)
    pages: tuple[tuple[int, Page], ...] = ()  # (offset into text, page) where each page, slide or sheet starts
    sections: tuple[tuple[int, str], ...] = ()  # (offset into text, heading path) where each section starts


@dataclass(frozen=True)
class LoadError:
    doc_id: str
    reason: str


class DocumentError(ValueError):
    """A single document could not be turned into text."""


class CorpusEmptyError(FileNotFoundError):
    """The corpus folder holds no readable document while the index holds some.

    A FileNotFoundError, as for a missing folder: an unmounted or mistyped folder looks empty, so
    callers keep answering from the existing index rather than emptying it.
    """


_SPACES = re.compile(r"[ \t\u00a0\u3000\u200b\ufeff]+")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def normalize(text: str) -> str:
    """NFKC, collapsed whitespace and Simplified Chinese: the form search and comparison work on.

    Traditional characters become Simplified (OpenCC's t2s, phrase-aware) so that a question in
    either script meets a passage in the other, in BM25 terms, embeddings and the judge's features
    alike; the text shown and quoted stays as written.
    """
    text = as_written(text)
    return _simplified(text) if _CJK.search(text) else text


def as_written(text: str) -> str:
    """NFKC and collapsed whitespace, in the document's own script: where values shown to users come from.

    A single line break between two Chinese characters is a wrap inside a word or sentence, which
    Chinese writes without a space: it is dropped, not made a space that would split the word.
    """
    text = unicodedata.normalize("NFKC", text)
    if "\n" in text:
        text = _CJK_WRAP.sub("", text)
    return re.sub(r"\s+", " ", text).strip()


_CJK_WRAP = re.compile(r"(?<=[\u3400-\u9fff\uf900-\ufaff])[^\S\n]*\n[^\S\n]*(?=[\u3400-\u9fff\uf900-\ufaff])")


@functools.cache
def _traditional_to_simplified():
    import opencc

    return opencc.OpenCC("t2s")


def _simplified(text: str) -> str:
    return _traditional_to_simplified().convert(text)


def is_chinese(text: str) -> bool:
    """True when CJK characters make up a fair share of the letters in `text`."""
    cjk = len(_CJK.findall(text))
    latin = len(re.findall(r"[A-Za-z]", text))
    return cjk > 0 and cjk >= latin / 4


def decode_bytes(raw: bytes) -> str:
    """Decode a text file: BOMs, UTF-16 by its NULs, strict UTF-8, GB18030 or cp1252/Latin-1, then a guess."""
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8", errors="strict")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        return raw.decode("utf-16")
    if b"\x00" in raw[:8192]:
        text = _utf16_without_bom(raw)
        if text is None:
            raise DocumentError("looks binary (NUL bytes) and is not UTF-16 text")
        return text
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        first_bad = exc.start
    if _mostly_utf8(raw):
        # GB18030 would decode most of these bytes too, as mojibake: refuse instead of guessing.
        raise DocumentError(
            f"invalid UTF-8 at byte {first_bad} (the rest is UTF-8): the file is damaged; re-save it as UTF-8"
        )
    try:
        return _legacy(raw)
    except DocumentError as refused:
        return _guessed(raw, refused)


def _legacy(raw: bytes) -> str:
    """Text that is not UTF-8: Western single-byte or GB18030 Chinese, by the byte patterns."""
    if _single_byte_letters(raw):
        return _western(raw)
    try:
        text = raw.decode("gb18030")
    except UnicodeDecodeError as exc:
        raise DocumentError("not valid UTF-8, UTF-16, GB18030 or Western (cp1252) text") from exc
    # GB18030 decodes almost any byte string; accept it only if the result reads as text:
    # Chinese, or (an English file saved on a Chinese system) punctuation and symbols only.
    plausible = _CJK.search(text) or all(_GB_SYMBOLS.match(ch) for ch in text if ord(ch) > 127)
    if not plausible or not _readable(text):
        raise DocumentError("not valid UTF-8, and does not read as GB18030 Chinese text")
    if _CJK.search(text):
        # Shift-JIS pairs are valid GB18030 too, as strings of rare characters (今日は -> 崱擔偼).
        japanese = _guess(raw, _JAPANESE_ENCODINGS)
        if japanese is not None and len(_KANA.findall(str(japanese))) >= 0.1 * len(_CJK.findall(text)):
            return str(japanese)
    return text


# charset-normalizer's bar on "mess" (odd letter and symbol mixes, 0..1), stricter than its default
# 0.2: control bytes read as a Cyrillic code page score 0.07 and are refused; real text scores ~0.
_MAX_CHAOS = 0.05
_JAPANESE_ENCODINGS = ["cp932", "shift_jis", "euc_jp"]
_KANA = re.compile(r"[\u3040-\u30ff]")


def _guess(raw: bytes, encodings: list[str] | None = None):
    """charset-normalizer's best reading of `raw` (among `encodings`), or None."""
    from charset_normalizer import from_bytes

    return from_bytes(raw, cp_isolation=encodings, threshold=_MAX_CHAOS).best()


def _guessed(raw: bytes, refused: DocumentError) -> str:
    """The statistical guess for what the rules refused: Big5, Cyrillic and other code pages."""
    best = _guess(raw)
    if best is None:
        raise refused
    text = str(best)
    if not _readable(text):
        raise DocumentError(f"{refused}; read as {best.encoding} it is not text either")
    return text


_GB_SYMBOLS = re.compile(r"[\u00a0-\u00ff\u2000-\u25ff\u3000-\u303f\uff00-\uffef]")
_HIGH_RUN = re.compile(rb"[\x80-\xff]+")


def _readable(text: str) -> bool:
    return sum(1 for ch in text if ch.isprintable() or ch in "\n\r\t") >= 0.98 * len(text)


def _utf16_without_bom(raw: bytes) -> str | None:
    """UTF-16 told by its NULs: the high byte of ASCII (and of much else), always on the same side.

    Binary files have NULs on both sides of the byte pairs; UTF-16 text (English, or Chinese with
    its line breaks and digits) has them mostly on one side (Chinese characters such as 一, U+4E00,
    put a few on the other), and must then decode strictly and read as text.
    """
    sample = raw[:8192]
    even, odd = sample[0::2].count(0), sample[1::2].count(0)
    if len(raw) % 2 or max(even, odd) < len(sample) / 40 or min(even, odd) > max(even, odd) / 2:
        return None
    try:  # NUL in the odd bytes: the low byte comes first
        text = raw.decode("utf-16-le" if odd > even else "utf-16-be")
    except UnicodeDecodeError:
        return None
    return text if _readable(text) else None


def _single_byte_letters(raw: bytes) -> bool:
    """True when most non-ASCII bytes stand alone between ASCII ones: accented letters in Western text.

    GBK/GB18030 writes each Chinese character (and each full-width symbol) as two or more bytes
    that are all non-ASCII in practice, so its non-ASCII bytes come in runs; in Latin-1 and cp1252
    an accented letter or a curly quote is one byte among ASCII letters. Judged on the first 4 MB.
    """
    runs = [len(run) for run in _HIGH_RUN.findall(raw[: 4 * 2**20])]
    return bool(runs) and runs.count(1) >= 0.6 * sum(runs)


def _western(raw: bytes) -> str:
    """cp1252 (Windows' Western encoding, a superset of Latin-1's letters), else Latin-1, if readable."""
    try:
        text = raw.decode("cp1252")
    except UnicodeDecodeError:  # the five bytes cp1252 leaves undefined
        text = raw.decode("latin-1")
    if not _readable(text):  # C1 control bytes: not text in any Western encoding
        raise DocumentError("not valid UTF-8, and does not read as Western (cp1252/Latin-1) text")
    return text


def _mostly_utf8(raw: bytes) -> bool:
    """True when the non-ASCII bytes are mostly well-formed UTF-8 (a file with a few damaged bytes).

    GB18030 text decoded as UTF-8 yields about one valid character per three invalid ones (0.29
    on the bundled Chinese documents): its two-byte characters rarely line up with UTF-8's lead
    and continuation bytes. A damaged UTF-8 file has many valid characters per invalid one.
    """
    text = raw.decode("utf-8", errors="replace")
    bad = text.count("\ufffd") - raw.count("\ufffd".encode())
    good = sum(1 for ch in text if ord(ch) > 127 and ch != "\ufffd")
    return good >= 2 * max(bad, 1)


# A navigation trail ("当前位置:首页>热点资讯", "Home > News > Local") or a byline/date line
# ("发布时间:2023-06-07 … 来源:…", "Posted: June 3") is never a document's title.
_BREADCRUMB = re.compile(r"当前位置|您的位置|你的位置|you are here|^(?:[^>›»\n]{1,30}[>›»]\s*)+[^>›»\n]{0,30}$", re.I)
_DATE_LINE = re.compile(
    r"^\W*(?:发布时间|发布日期|时间|日期|来源|作者|编辑|published|posted|updated|date|source|by)\s*[:：]"
    r"|^\W*\d{4}[-/.年]\d{1,2}(?:[-/.月]\d{1,2}日?)?(?:\s+\d{1,2}:\d{2}(?::\d{2})?)?\W*$",
    re.I,
)


def title_of(text: str, own_title: str = "", file_name: str = "") -> str:
    """The document's own title; else its first line that is not a breadcrumb or a date line; else its file name.

    At most 200 characters. Only the first 40 lines are looked at, so a large file is never split whole.
    """
    if own_title.strip():
        return " ".join(own_title.split())[:200]
    for match in zip(range(40), re.finditer(r"\S[^\n]{0,400}", text)):
        line = match[1].group().strip()
        if _BREADCRUMB.search(line) or _DATE_LINE.search(line):
            continue
        return line[:200]
    return file_name


# Kinds whose conversion costs more than reading the cache (a PDF: ~5 ms a page; a web page
# through trafilatura: ~0.1-0.3 s); text, Markdown and CSV convert faster than JSON loads.
_CACHED_KINDS = frozenset(("pdf", "docx", "pptx", "xlsx", "epub", "image", "html"))


def load_document(
    path: Path,
    doc_id: str,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    ocr_languages: str = "",
    cache_dir: Path | None = None,
) -> Document:
    """Read one file of any supported kind (told by content, then extension) into a Document.

    Scans and images are read by OCR in `ocr_languages`. With a `cache_dir`, OCR'd pages (see
    rag.formats.ocr) and whole conversions of the costly kinds (rag.formats.cache) are kept there.
    """
    # O_NONBLOCK: a named pipe with a document's name must not block the whole index.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)  # of the file actually read, even if the path is replaced meanwhile
        if not stat.S_ISREG(st.st_mode):
            raise DocumentError("not a regular file (a pipe, socket or device)")
        if st.st_size > max_bytes:
            raise DocumentError(
                f"{st.st_size / 2**20:.0f} MB, larger than the {max_bytes / 2**20:g} MB limit: "
                "split it, or raise RAG_MAX_DOCUMENT_MB"
            )
        raw = fh.read(max_bytes + 1)
    sha256 = hashlib.sha256(raw).hexdigest()
    try:
        kind = formats.kind_of(raw, path.suffix)
        cached = kind in _CACHED_KINDS and cache_dir is not None
        converted = conversion_cache.load(cache_dir, kind, sha256, ocr_languages) if cached else None
        if converted is None:
            if kind in formats.TEXT_KINDS:
                text = decode_bytes(raw).replace("\r\n", "\n").replace("\r", "\n")
                converted = formats.convert_text(kind, text)
            else:
                converted = formats.convert_bytes(kind, raw, ocr_languages, ocr_cache_dir=cache_dir, name=doc_id)
            if cached:
                conversion_cache.store(cache_dir, kind, sha256, ocr_languages, converted)
    except formats.ConversionError as exc:
        raise DocumentError(str(exc)) from exc
    except (DocumentError, UnicodeError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a converter library failing on one file must not stop the rest
        raise DocumentError(f"could not be converted ({type(exc).__name__}: {exc})") from exc
    if not converted.text.strip():
        raise DocumentError("no text layer, and OCR found no text" if converted.ocr_pages else "contains no text")
    return Document(
        doc_id=doc_id,
        title=title_of(converted.text, converted.title, path.name),
        text=converted.text,
        content_hash=sha256,
        stamp=(st.st_size, st.st_mtime_ns),
        kind=kind,
        pages=converted.pages,
        sections=converted.sections,
    )


def locate(marks: Sequence[Sequence], offset: int):
    """The label of the last (offset, label) mark at or before `offset`; None before the first."""
    i = bisect.bisect_right([m[0] for m in marks], offset)
    return marks[i - 1][1] if i else None


def iter_document_paths(corpus_dir: Path) -> Iterator[tuple[str, Path]]:
    """(doc_id, path) for every file under `corpus_dir` but hidden ones, sorted, symlink loops skipped.

    Every file is listed, of any type: loading tells which it can read and names the rest as skipped.
    """
    seen_dirs: set[tuple[int, int]] = set()
    found: list[tuple[str, Path]] = []
    for root, dirs, files in os.walk(corpus_dir, followlinks=True):
        try:
            st = os.stat(root)
        except OSError:
            dirs[:] = []
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:  # a symlink loop, or a second link to the same folder
            dirs[:] = []
            continue
        seen_dirs.add(key)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):  # hidden files (.DS_Store, editor swap files) are not documents
                continue
            path = Path(root) / name
            found.append((path.relative_to(corpus_dir).as_posix(), path))
    yield from sorted(found)


def load_corpus(
    corpus_dir: Path,
    max_bytes: int = MAX_DOCUMENT_BYTES,
    ocr_languages: str = "",
    cache_dir: Path | None = None,
    exclude: Callable[[str, Path], bool] | None = None,
) -> tuple[list[Document], list[LoadError]]:
    """Every readable document under `corpus_dir`, and a reason for each one skipped.

    `exclude(doc_id, path)`: True for a file not to read (a refresh's unchanged files)."""
    documents: list[Document] = []
    errors: list[LoadError] = []
    for doc_id, path in corpus_paths(corpus_dir):
        if exclude is not None and exclude(doc_id, path):
            continue
        read = load_or_skip(path, doc_id, max_bytes, ocr_languages, cache_dir)
        (documents if isinstance(read, Document) else errors).append(read)
    return documents, errors


def corpus_paths(corpus_dir: Path) -> list[tuple[str, Path]]:
    """(doc_id, path) of every file `load_corpus` reads, in its order; a missing folder is an error."""
    if not corpus_dir.is_dir():
        raise FileNotFoundError(
            f"corpus folder {corpus_dir} does not exist: create it or point --corpus / RAG_CORPUS_DIR at your documents"
        )
    return list(iter_document_paths(corpus_dir))


def load_or_skip(
    path: Path, doc_id: str, max_bytes: int = MAX_DOCUMENT_BYTES, ocr_languages: str = "", cache_dir: Path | None = None
) -> Document | LoadError:
    """One file as `load_corpus` reads it: the Document, or the reason it is skipped."""
    try:
        return load_document(path, doc_id, max_bytes, ocr_languages, cache_dir)
    except (OSError, DocumentError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return LoadError(doc_id, reason or type(exc).__name__)
