"""Uploads into a collection: only inside its corpus folder, only types the indexer reads, never over a file."""

from __future__ import annotations

import io
import os
import zipfile
from pathlib import Path

import pytest

from rag import collection
from rag.config import Settings
from rag.upload import UploadError, corpus_for_upload, remove, safe_name, store

LIMIT = 1024


@pytest.fixture
def corpus() -> Path:
    return corpus_for_upload(collection.create("team"), Settings())


def _docx() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("[Content_Types].xml", "<Types/>")
        zf.writestr("word/document.xml", "<w:document/>")
    return out.getvalue()


def test_a_text_file_is_stored_under_its_name_and_nothing_else_is_left(corpus: Path):
    path = store(corpus, "notes.txt", b"The okapi harbour opens at dawn.\n", LIMIT)
    assert path == corpus / "notes.txt" and path.read_bytes().startswith(b"The okapi")
    assert sorted(p.name for p in corpus.iterdir()) == ["notes.txt"]  # no part file left behind


@pytest.mark.parametrize(
    "name", ["../evil.txt", "../../etc/cron.d/x.txt", "/etc/passwd.txt", "sub/evil.txt", "..\\evil.txt", "..", "."]
)
def test_names_with_a_path_are_refused_and_nothing_is_written_outside(corpus: Path, name: str):
    with pytest.raises(UploadError, match="cannot hold a path|no usable name"):
        store(corpus, name, b"x\n", LIMIT)
    assert list(corpus.iterdir()) == []
    assert not (corpus.parent / "evil.txt").exists()


def test_names_are_cleaned_of_control_and_shell_characters_and_cannot_be_hidden():
    assert safe_name("a\x00b<c>:d|e?.txt") == "a_b_c__d_e_.txt"
    assert safe_name("  report.pdf ") == "report.pdf"
    assert safe_name("..hidden.txt") == "hidden.txt"  # a leading dot would hide it from the indexer
    assert len(safe_name("x" * 300 + ".md")) == 120 and safe_name("x" * 300 + ".md").endswith(".md")
    with pytest.raises(UploadError):
        safe_name("...")


def test_an_existing_file_is_never_overwritten(corpus: Path):
    store(corpus, "notes.txt", b"first\n", LIMIT)
    with pytest.raises(UploadError, match="already in the collection: delete it first"):
        store(corpus, "notes.txt", b"second\n", LIMIT)
    assert (corpus / "notes.txt").read_bytes() == b"first\n"


def test_a_symlink_in_the_collection_folder_is_not_written_through(corpus: Path, tmp_path: Path):
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    (corpus / "link.txt").symlink_to(outside)
    (corpus / "dangling.txt").symlink_to(tmp_path / "nowhere.txt")
    for name in ("link.txt", "dangling.txt"):
        with pytest.raises(UploadError, match="already in the collection"):
            store(corpus, name, b"overwritten\n", LIMIT)
    assert outside.read_text() == "precious\n" and not (tmp_path / "nowhere.txt").exists()


def test_a_collection_whose_corpus_folder_is_a_symlink_takes_no_uploads(tmp_path: Path):
    team = collection.create("linked")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (team.folder / "corpus").rmdir()
    (team.folder / "corpus").symlink_to(elsewhere)
    with pytest.raises(UploadError, match="no plain corpus folder"):
        corpus_for_upload(team, Settings())


def test_an_oversize_file_is_refused(corpus: Path):
    with pytest.raises(UploadError, match="the limit is"):
        store(corpus, "big.txt", b"x" * (LIMIT + 1), LIMIT)
    assert list(corpus.iterdir()) == []


@pytest.mark.parametrize("name", ["tool.exe", "script.sh", "noextension", "archive.zip", "old.doc"])
def test_a_type_the_indexer_does_not_read_is_refused(corpus: Path, name: str):
    with pytest.raises(UploadError, match="unsupported type"):
        store(corpus, name, b"MZ\x90\x00 binary", LIMIT)
    assert list(corpus.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "raw", "why"),
    [
        ("report.pdf", b"just some text\n", "not a valid PDF"),
        ("slides.docx", b"%PDF-1.4\n...", "its content is PDF, not Word"),
        ("scan.png", _docx(), r"its content is Word \(\.docx\), not image"),
        ("notes.txt", b"%PDF-1.4\n...", "its content is PDF, not text"),
        ("notes.txt", b"ELF\x00\x01\x02 binary", "is not text"),
        ("old.docx", b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1 ole", "old binary Office file"),
    ],
)
def test_content_that_does_not_match_its_extension_is_refused(corpus: Path, name: str, raw: bytes, why: str):
    with pytest.raises(UploadError, match=why):
        store(corpus, name, raw, 4096)
    assert list(corpus.iterdir()) == []


def test_the_real_formats_are_accepted(corpus: Path):
    store(corpus, "letter.docx", _docx(), 4096)
    store(corpus, "page.html", b"<!doctype html><title>x</title><p>y</p>", LIMIT)
    store(corpus, "table.csv", "name,city\n王,杭州\n".encode(), LIMIT)
    assert sorted(os.listdir(corpus)) == ["letter.docx", "page.html", "table.csv"]


def test_the_default_collection_takes_no_uploads():
    with pytest.raises(UploadError, match="Create a collection to upload into"):
        corpus_for_upload(collection.get("default"), Settings())


def test_remove_deletes_a_listed_document_only(corpus: Path, tmp_path: Path):
    store(corpus, "notes.txt", b"x\n", LIMIT)
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    (corpus / "link.txt").symlink_to(outside)
    remove(corpus, "link.txt")  # the link goes, not what it points to
    assert outside.read_text() == "precious\n" and not os.path.lexists(corpus / "link.txt")
    for doc_id in ("../outside.txt", "/etc/passwd", "missing.txt", ""):
        with pytest.raises(UploadError, match="not a document of this collection"):
            remove(corpus, doc_id)
    remove(corpus, "notes.txt")
    assert list(corpus.iterdir()) == [] and outside.exists()
