"""Uploads: putting a file from the web into a collection's corpus folder, and taking one out.

Only named collections take uploads: the `default` one is the bundled corpus (inside the installed
package) or a folder given with --corpus that the app does not own. A file is checked before a
byte is written: its size, a name that stays in the folder, and a type the indexer reads, by its
extension and by its content (rag.formats.kind_of). It is written beside its final name as a
hidden part file and then hard-linked into place, so the indexer never reads half a file and an
existing file (or a symlink planted in the folder) is never overwritten or followed.
Trade-off: uploads land at the top of the corpus folder; sub-folders are kept for files put there
by hand.
"""

from __future__ import annotations

import os
import re
import secrets
import unicodedata
from pathlib import Path

from rag.collection import Collection
from rag.config import Settings
from rag.documents import iter_document_paths
from rag.formats import KIND_NAMES, SUFFIXES, TEXT_KINDS, ConversionError, kind_of, supported_list

MAX_NAME_CHARS = 120  # a name a person can read in a list; file systems allow 255 bytes
# Characters Windows, shells or URLs treat specially: replaced, so a name means the same everywhere.
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"|?*;$`\\]')


class UploadError(ValueError):
    """A file that was not stored (or removed); the message names it and says what to do."""


def corpus_for_upload(collection: Collection, base: Settings) -> Path:
    """The folder uploads into `collection` go to; an UploadError for the default collection."""
    if collection.folder is None:
        raise UploadError(
            "The default collection is the bundled (or --corpus) folder, which the app does not change. "
            "Create a collection to upload into: `rag collection create NAME`. · "
            "默认文档集不能上传，请先用 `rag collection create NAME` 创建文档集。"
        )
    corpus = collection.corpus_dir(base)
    if corpus.is_symlink() or not corpus.is_dir():
        raise UploadError(f"the collection {collection.name!r} has no plain corpus folder to write into ({corpus})")
    return corpus


def safe_name(name: str) -> str:
    """`name` as a file name in the corpus folder, or an UploadError when it would leave it.

    A name with a path in it is refused rather than cut to its last part: browsers send bare
    names, so one with '/' or '..' was crafted.
    """
    name = unicodedata.normalize("NFC", name or "").strip()
    if "/" in name or "\\" in name or name in (".", ".."):
        raise UploadError(f"{name!r}: a file name cannot hold a path ('/', '\\' or '..')")
    name = _UNSAFE.sub("_", name).strip(" .")  # a leading dot would hide the file from the indexer
    if not name or name.startswith("."):
        raise UploadError("the file has no usable name: rename it and upload it again")
    stem, suffix = os.path.splitext(name)
    if len(name) > MAX_NAME_CHARS:
        name = stem[: MAX_NAME_CHARS - len(suffix)].rstrip(" .") + suffix
    return name


def check_content(raw: bytes, name: str, max_bytes: int) -> str:
    """The kind of document `raw` is; an UploadError when it is too large, or not a type the indexer
    reads, or its content is not what its extension says."""
    if len(raw) > max_bytes:
        raise UploadError(f"{name} is {len(raw) / 2**20:.1f} MB; the limit is {max_bytes / 2**20:g} MB")
    if not raw:
        raise UploadError(f"{name} is empty")
    suffix = os.path.splitext(name)[1].lower()
    expected = SUFFIXES.get(suffix)
    if expected is None:
        raise UploadError(f"{name}: unsupported type ({suffix or 'no extension'}); supported: {supported_list()}")
    try:
        kind = kind_of(raw, suffix)
    except ConversionError as exc:
        raise UploadError(f"{name}: {exc}") from exc
    if expected in TEXT_KINDS and kind in TEXT_KINDS:
        # Text, Markdown, HTML and CSV are all read as text; a NUL byte means it is not text at all.
        if b"\x00" in raw[:8192]:
            raise UploadError(f"{name}: its content is not {KIND_NAMES[expected]} text, as its extension says")
    elif kind != expected:
        raise UploadError(
            f"{name}: its content is {KIND_NAMES[kind]}, not {KIND_NAMES[expected]} as its extension says: "
            "rename it with the right extension"
        )
    return kind


def store(corpus: Path, name: str, raw: bytes, max_bytes: int) -> Path:
    """Write `raw` as `name` into `corpus` (checked as above); never over an existing file or link."""
    name = safe_name(name)
    check_content(raw, name, max_bytes)
    target = corpus / name
    if os.path.lexists(target):
        raise UploadError(
            f"{name} is already in the collection: delete it first to replace it, or rename your file · 同名文件已存在"
        )
    part = corpus / f".upload-{secrets.token_hex(8)}.part"
    # O_EXCL and O_NOFOLLOW: the part file is new, and no link planted under its name is followed.
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(raw)
            out.flush()
            os.fsync(out.fileno())
        try:
            os.link(part, target)  # fails, rather than replaces, if the name appeared meanwhile
        except FileExistsError:
            raise UploadError(f"{name} is already in the collection: delete it first to replace it") from None
    finally:
        part.unlink(missing_ok=True)
    return target


def remove(corpus: Path, doc_id: str) -> Path:
    """Delete the document `doc_id` (as the index names it) from `corpus`; a link is removed, not followed."""
    known = dict(iter_document_paths(corpus))
    if doc_id not in known or any(part in ("", ".", "..") for part in doc_id.split("/")):
        raise UploadError(f"{doc_id!r} is not a document of this collection")
    path = corpus / doc_id
    if Path(os.path.realpath(path.parent)) != Path(os.path.realpath(corpus)) / Path(doc_id).parent:
        raise UploadError(f"{doc_id!r} is not inside the collection's folder")
    path.unlink()
    return path
