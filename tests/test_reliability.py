"""Bad input and index integrity (issue 8): every case gives a clear message and loses nothing.

Each bad document is added beside the four good ones of the `corpus_dir` fixture; the test then
checks the bad one is reported by name (or decoded, where it is only unusual), and that the good
ones are still indexed and answerable. Crashes are simulated in-process here, at every step of
writing a generation; tests/test_crash.py kills real `rag index` processes.
"""

from __future__ import annotations

import errno
import os
import pickle
import re
import shutil
import socket
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import rag.documents
import rag.indexing
from rag import cli
from rag.assistant import MAX_QUESTION_CHARS, Assistant, QuestionError
from rag.chat import escape_markdown, format_answer, sources_html
from rag.config import PROJECT_ROOT, Settings
from rag.indexing import (
    IndexError_,
    IndexMismatchError,
    current_generation,
    index_lock,
    load_index,
    refresh_index,
)

GOOD_DOCS = ["alpha.txt", "beta.md", "chinese.txt", "mixed.txt"]
ANSWERABLE = [
    ("Which airship carries tourists between the islands?", "alpha.txt", "zeppelin Aurora"),
    ("论坛集中展示了多少项重大科技成果?", "chinese.txt", "585"),
    ("What did the club observe through the new telescope?", "beta.md", "quasar"),
]
CHINESE = "长三角科技成果展\n论坛集中展示了长三角地区近年来取得的重大科技成果，其中浙江165项。\n"


def assert_answerable(assistant: Assistant) -> None:
    """The good documents still answer their questions, citing themselves."""
    for question, doc_id, fact in ANSWERABLE:
        answer = assistant.ask(question)
        assert not answer.abstained, question
        assert fact in answer.answer
        assert doc_id in {c.doc_id for c in answer.citations}


# --------------------------------------------------------------------------- questions


@pytest.fixture
def assistant(settings, embedder) -> Assistant:
    assistant = Assistant(settings, embedder)
    assistant.refresh()
    return assistant


QUESTION_CASES = {
    # name: (question, expected): an error pattern, "abstain", ("answer", doc_id, fact) or
    # ("found", doc_id, fact) -- the passage is cited, or listed as nearest when the assistant abstains
    "empty": ("", r"the question is empty"),
    "whitespace": (" \t\n\u3000 ", r"the question is empty"),
    "100 KB long": ("What is it? " * 8600, rf"characters long; the limit is {MAX_QUESTION_CHARS}"),
    "control characters": (
        "What\x00 did the club\x1b[31m observe\x07 through the new telescope?\x7f",
        # "[31m" stays as text, which the fake embedder's judge reads as noise: found, maybe not answered.
        ("found", "beta.md", "quasar"),
    ),
    "only emoji": ("😀🎉🔭", "abstain"),
    "HTML": (
        "<script>alert(1)</script><img src=x onerror=alert(2)> Which airship carries tourists between the islands?",
        ("found", "alpha.txt", "zeppelin Aurora"),  # the markup's words dilute the evidence: may abstain
    ),
    "markdown": (
        "**What** did the club observe through the [new telescope](javascript:alert(1))?",
        ("found", "beta.md", "quasar"),
    ),
    "mixed scripts": ("Which airship 飞艇 carries tourists between the islands?", ("answer", "alpha.txt", "zeppelin")),
    "Chinese with English": ("论坛集中展示了多少项 major 科技成果?", ("answer", "chinese.txt", "585")),
}


@pytest.mark.parametrize("case", QUESTION_CASES)
def test_bad_questions_give_a_clear_message_or_an_inert_answer(assistant, case):
    question, expected = QUESTION_CASES[case]
    if isinstance(expected, str) and expected != "abstain":
        with pytest.raises(QuestionError, match=expected):
            assistant.ask(question)
    else:
        answer = assistant.ask(question)
        if expected == "abstain":
            assert answer.abstained
            assert answer.nearest  # the user still sees where to look
        elif expected[0] == "found":
            _, doc_id, fact = expected
            assert any(doc_id == c.doc_id and fact in c.text for c in answer.citations or answer.nearest)
        else:
            _, doc_id, fact = expected
            assert not answer.abstained
            assert fact in answer.answer
            assert doc_id in {c.doc_id for c in answer.citations}
        # What the chat shows of the question and the answer is inert text.
        for rendered in (escape_markdown(question), format_answer(answer), sources_html(answer, asked=question)):
            assert "<script" not in rendered and "<img" not in rendered and "](javascript" not in rendered
    assert_answerable(assistant)


# --------------------------------------------------------------------------- documents


def nested_html(depth: int) -> bytes:
    return ("<html><body>" + "<div><span>" * depth + "deep text" + "</span></div>" * depth + "</body></html>").encode()


def utf8_with_a_dropped_byte() -> bytes:
    raw = (CHINESE * 5).encode("utf-8")
    return raw[:40] + raw[41:]


def dangling(folder: Path, name: str) -> None:
    (folder / name).symlink_to(folder / "nowhere.txt")


def symlink_loop(folder: Path, name: str) -> None:
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.txt").write_text("Inner notes about the lighthouse keeper.\n", encoding="utf-8")
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)
    (folder / "sub" / "self").symlink_to(folder / "sub", target_is_directory=True)


def fifo(folder: Path, name: str) -> None:
    os.mkfifo(folder / name)  # reading it would block forever


def sparse_65_mb(folder: Path, name: str) -> None:
    with (folder / name).open("wb") as fh:  # sparse: no disk space used
        fh.truncate(65 * 2**20)


# name: (file name, bytes or a function (folder, name) -> None, expected)
# expected: ("skipped", reason pattern) or ("indexed", text the document must contain)
DOCUMENT_CASES = {
    "empty file": ("empty.txt", b"", ("skipped", r"contains no text")),
    "whitespace only": ("blank.md", b" \n\t\r\n", ("skipped", r"contains no text")),
    "binary with a .txt name": (
        "photo.txt",
        b"\x00\x00\x00\x07BIN\x00" + bytes(range(256)) * 8,
        ("skipped", r"looks binary"),
    ),
    "random bytes": ("noise.txt", np.random.default_rng(7).bytes(20_000), ("skipped", r"binary|not valid")),
    "invalid UTF-8 (a dropped byte)": (
        "damaged.txt",
        utf8_with_a_dropped_byte(),
        ("skipped", r"invalid UTF-8 at byte 40"),
    ),
    "Latin-1 text": (
        "latin1.txt",
        "Café au lait, naïve façade, Müller\n".encode("latin-1"),
        ("indexed", "naïve façade"),
    ),
    "cp1252 text with curly quotes": (
        "cp1252.txt",
        "“Smart” quotes – and an œuvre for 5 €, señor\n".encode("cp1252"),
        ("indexed", "“Smart” quotes – and an œuvre for 5 €"),
    ),
    "Latin-1 bytes that GBK also decodes": (
        # Every accented letter followed by a letter: a valid GBK byte pair, read as Latin-1 all the same.
        "latin1-gbk.txt",
        "Die Bäume blühen, schöne Grüße aus Köln\n".encode("latin-1"),
        ("indexed", "schöne Grüße aus Köln"),
    ),
    "control bytes in a single-byte file": (
        "c1.txt",
        b"Report\n" + bytes(range(0x80, 0xA0)) * 4,
        ("skipped", r"not valid UTF-8"),
    ),
    "UTF-16 LE without BOM": (
        "utf16le-nobom.txt",
        "UTF-16 notes\n长三角 lighthouse keeper\n".encode("utf-16-le"),
        ("indexed", "长三角 lighthouse keeper"),
    ),
    "UTF-16 LE without BOM, Chinese": (
        # 一 (U+4E00) puts NULs on the other side of the byte pairs too.
        "utf16-zh-nobom.txt",
        ("长三角一体化发展高层论坛举行，一共展示了585项成果。\n" * 3).encode("utf-16-le"),
        ("indexed", "一共展示了585项成果"),
    ),
    "UTF-16 BE without BOM": (
        "utf16be-nobom.md",
        "Big-endian notes 大端 about the lighthouse\n".encode("utf-16-be"),
        ("indexed", "大端 about the lighthouse"),
    ),
    "GBK Chinese": ("gbk.txt", CHINESE.encode("gbk"), ("indexed", "其中浙江165项")),
    "GB18030 Chinese (beyond GBK)": ("gb18030.txt", (CHINESE + "𠀀 €\n").encode("gb18030"), ("indexed", "𠀀 €")),
    "GBK English with curly quotes": (
        "gbk-en.txt",
        "“Quoted” notes — about the lighthouse keeper…\n".encode("gbk"),
        ("indexed", "“Quoted” notes — about"),
    ),
    "UTF-16 LE with BOM": (
        "utf16le.txt",
        "UTF-16 notes\r\n长三角 lighthouse\r\n".encode("utf-16"),
        ("indexed", "长三角 lighthouse"),
    ),
    "UTF-16 BE with BOM": (
        "utf16be.md",
        b"\xfe\xff" + "Big-endian 大端 notes\n".encode("utf-16-be"),
        ("indexed", "大端"),
    ),
    "UTF-8 with BOM": (
        "bom.txt",
        b"\xef\xbb\xbf" + "BOM notes about 灯塔\n".encode(),
        ("indexed", "BOM notes about 灯塔"),
    ),
    "deeply nested HTML (20,000 levels)": ("nested.html", nested_html(20_000), ("indexed", "deep text")),
    "HTML with script and event handlers": (
        "hostile.html",
        b"<p onclick='alert(1)'>Visible lighthouse text</p><script>alert(2)</script>",
        ("indexed", "Visible lighthouse text"),
    ),
    "dangling symlink": ("dangling.txt", dangling, ("skipped", r"No such file")),
    "symlink loop": ("sub", symlink_loop, ("indexed-as", "sub/inner.txt")),
    "named pipe with a .txt name": ("pipe.txt", fifo, ("skipped", r"not a regular file")),
    "over the 64 MB limit": ("huge.txt", sparse_65_mb, ("skipped", r"larger than the 64 MB limit")),
}


@pytest.mark.parametrize("case", DOCUMENT_CASES)
def test_a_bad_document_is_reported_by_name_and_the_rest_stay_answerable(settings, embedder, case):
    name, content, (outcome, detail) = DOCUMENT_CASES[case]
    if callable(content):
        content(settings.corpus_dir, name)
    else:
        (settings.corpus_dir / name).write_bytes(content)
    assistant = Assistant(settings, embedder)
    report = assistant.refresh()
    skipped = {e.doc_id: e.reason for e in report.skipped}
    if outcome == "skipped":
        assert list(skipped) == [name]
        assert re.search(detail, skipped[name]), skipped[name]
        assert f"skipped: {name}: " in report.summary()
        assert name not in assistant.index.documents
    elif outcome == "indexed-as":
        assert skipped == {}
        assert sorted(assistant.index.documents) == sorted([*GOOD_DOCS, detail])  # once, not once per loop
    else:
        assert skipped == {}
        text = "".join(c.text for c in assistant.index.chunks if c.doc_id == name)
        assert detail in text
    assert set(GOOD_DOCS) <= set(assistant.index.documents)
    assert_answerable(assistant)


def test_an_unreadable_file_is_skipped_by_name(settings, embedder, monkeypatch):
    # Tests run as root, for whom chmod 000 changes nothing: the refusal is simulated at open().
    victim = str(settings.corpus_dir / "secret.txt")
    (settings.corpus_dir / "secret.txt").write_text("Locked notes.\n", encoding="utf-8")
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if os.fspath(path) == victim:
            raise PermissionError(errno.EACCES, "Permission denied", victim)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", refusing_open)
    assistant = Assistant(settings, embedder)
    report = assistant.refresh()
    assert [(e.doc_id, e.reason) for e in report.skipped] == [("secret.txt", "Permission denied")]
    assert sorted(assistant.index.documents) == GOOD_DOCS
    assert_answerable(assistant)


def test_a_file_deleted_before_it_is_read_is_skipped_by_name(settings, embedder, monkeypatch):
    (settings.corpus_dir / "gone.txt").write_text("Soon deleted.\n", encoding="utf-8")
    real_load = rag.documents.load_document

    def delete_then_load(path, doc_id, *args):
        if doc_id == "gone.txt":
            path.unlink()  # listed, then deleted before it is opened
        return real_load(path, doc_id, *args)

    monkeypatch.setattr(rag.documents, "load_document", delete_then_load)
    assistant = Assistant(settings, embedder)
    report = assistant.refresh()
    assert [e.doc_id for e in report.skipped] == ["gone.txt"]
    assert "No such file" in report.skipped[0].reason
    assert_answerable(assistant)


def test_a_file_deleted_after_it_was_read_is_indexed_then_removed_by_the_next_refresh(settings, embedder):
    victim = settings.corpus_dir / "late.txt"
    victim.write_text("Lighthouse keeper notes.\n", encoding="utf-8")

    class DeletingEmbedder(type(embedder)):
        def embed_passages(self, texts):
            if victim.exists():
                victim.unlink()  # while the index is being built
            return super().embed_passages(texts)

    assistant = Assistant(settings, DeletingEmbedder())
    first = assistant.refresh()
    assert "late.txt" in first.added
    assert assistant.is_stale()  # its recorded stamp is of the file that was read
    second = assistant.refresh()
    assert second.removed == ["late.txt"]
    assert sorted(assistant.index.documents) == GOOD_DOCS
    assert_answerable(assistant)


# --------------------------------------------------------------------------- config


@pytest.fixture
def fake_model(monkeypatch, embedder):
    """`rag` commands in-process with the fake embedder in place of the real model."""
    monkeypatch.setattr("rag.assistant.load_embedder", lambda name, cache_dir, precision: embedder)
    return embedder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_missing_corpus_folder_is_a_clear_error_and_keeps_an_existing_index(settings, fake_model, capsys, tmp_path):
    flags = ["--index-dir", str(settings.index_dir)]
    missing = tmp_path / "unmounted"
    code, _, err = run_cli(capsys, "index", "--corpus", str(missing), *flags)
    assert code == 1
    assert f"corpus folder {missing} does not exist" in err
    assert "RAG_CORPUS_DIR" in err
    assert current_generation(settings.index_dir) is None  # nothing half-written

    assert run_cli(capsys, "index", "--corpus", str(settings.corpus_dir), *flags)[0] == 0
    generation = current_generation(settings.index_dir)
    code, _, err = run_cli(capsys, "index", "--corpus", str(missing), *flags)
    assert code == 1 and "does not exist" in err
    assert current_generation(settings.index_dir) == generation  # the index was not emptied
    # Questions are still answered from the index, with a warning.
    code, out, err = run_cli(capsys, "ask", "--corpus", str(missing), *flags, ANSWERABLE[0][0])
    assert code == 0, err
    assert "does not exist" in err and "answering from the existing index" in err
    assert ANSWERABLE[0][2] in out


def test_an_empty_corpus_folder_is_refused_by_rag_index_unless_allowed(settings, fake_model, capsys, tmp_path):
    flags = ["--corpus", str(settings.corpus_dir), "--index-dir", str(settings.index_dir)]
    assert run_cli(capsys, "index", *flags)[0] == 0
    generation = current_generation(settings.index_dir)
    for name in GOOD_DOCS:  # as an unmounted drive's mount point looks
        (settings.corpus_dir / name).unlink()
    for extra in ([], ["--rebuild"]):
        code, _, err = run_cli(capsys, "index", *flags, *extra)
        assert code == 1
        assert "has no readable documents, but the index holds 4" in err and "--allow-empty" in err
        assert current_generation(settings.index_dir) == generation
    code, out, err = run_cli(capsys, "ask", *flags, ANSWERABLE[0][0])
    assert code == 0, err
    assert "answering from the existing index" in err and ANSWERABLE[0][2] in out

    code, out, err = run_cli(capsys, "index", *flags, "--allow-empty")
    assert code == 0, err
    assert "removed 4" in out
    assert load_index(settings.index_dir, fake_model).documents == {}


def test_the_document_size_limit_is_a_setting(settings, embedder, monkeypatch):
    (settings.corpus_dir / "big.txt").write_text("Lighthouse keeper notes.\n" * 50_000, encoding="utf-8")  # 1.2 MB
    monkeypatch.setenv("RAG_MAX_DOCUMENT_MB", "0.5")
    limited = Settings.from_env(corpus_dir=settings.corpus_dir, index_dir=settings.index_dir)
    report = refresh_index(limited, embedder)
    assert [(e.doc_id, e.reason) for e in report.skipped] == [
        ("big.txt", "1 MB, larger than the 0.5 MB limit: split it, or raise RAG_MAX_DOCUMENT_MB")
    ]
    assert refresh_index(limited.with_(max_document_mb=2), embedder).added == ["big.txt"]


def test_an_index_from_another_model_is_named_and_rebuilt(settings, embedder, make_embedder):
    refresh_index(settings, embedder)
    other = make_embedder(name="other-model", dim=32)
    with pytest.raises(IndexMismatchError) as info:
        load_index(settings.index_dir, other)
    message = str(info.value)
    assert "'fake-hash-64' (dimension 64)" in message and "'other-model' (dimension 32)" in message
    assert "rag index --rebuild" in message
    # The assistant notices on its own and rebuilds, saying why.
    assistant = Assistant(settings, other)
    report = assistant.ensure_index()
    assert "embedding model changed from 'fake-hash-64' to 'other-model'" in report.rebuilt_because
    assert sorted(assistant.index.documents) == GOOD_DOCS


def test_an_unreachable_llm_server_gives_the_extractive_answer_with_the_reason(settings, embedder):
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    assistant = Assistant(settings.with_(llm_base_url=url, llm_model="local", llm_timeout=5.0), embedder)
    assistant.refresh()
    question, doc_id, fact = ANSWERABLE[0]
    answer = assistant.ask(question)
    assert answer.verification["error"] == f"cannot reach the LLM server at {url}: is it running? (RAG_LLM_BASE_URL)"
    assert url in answer.answer  # the notice in front of the quote
    assert fact in answer.answer
    assert doc_id in {c.doc_id for c in answer.citations}


@pytest.mark.slow
def test_a_model_that_does_not_exist_is_named_and_the_index_is_kept(settings, embedder, monkeypatch, capsys):
    refresh_index(settings, embedder)
    generation = current_generation(settings.index_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no network here; online, the hub answers "not found"
    flags = ["--corpus", str(settings.corpus_dir), "--index-dir", str(settings.index_dir)]
    code, _, err = run_cli(capsys, "index", "--model", "no-such-model-zzz", *flags)
    assert code == 1
    assert "cannot load embedding model 'no-such-model-zzz'" in err
    assert "bundled default 'multilingual-e5-small'" in err
    assert current_generation(settings.index_dir) == generation
    assert sorted(load_index(settings.index_dir, embedder).documents) == GOOD_DOCS


def test_a_non_numeric_setting_is_named(monkeypatch, capsys):
    monkeypatch.setenv("RAG_TOP_K", "five")
    code, _, err = run_cli(capsys, "index")
    assert code == 1
    assert "RAG_TOP_K='five' is not a valid int" in err


# --------------------------------------------------------------------------- integrity on load


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGES = {"truncated": truncate, "flipped byte": flip_byte, "missing": Path.unlink}
INDEX_FILES = ["manifest.json", *rag.indexing._FILES]  # a generation's manifest and every file of its segment


@pytest.mark.parametrize("damage", DAMAGES)
@pytest.mark.parametrize("name", [*INDEX_FILES, "CURRENT"])
def test_damage_is_named_on_load_and_rag_index_rebuild_repairs_it(settings, fake_model, capsys, damage, name):
    flags = ["--corpus", str(settings.corpus_dir), "--index-dir", str(settings.index_dir)]
    assert run_cli(capsys, "index", *flags)[0] == 0
    generation = current_generation(settings.index_dir)
    if name == "CURRENT":
        path = settings.index_dir / name
    else:
        path = (
            generation / name if name == "manifest.json" else rag.indexing.segment_folders(settings.index_dir)[0] / name
        )
    DAMAGES[damage](path)

    with pytest.raises(IndexError_) as info:
        load_index(settings.index_dir, fake_model)
    message = str(info.value)
    assert name in message
    assert "rag index" in message  # --rebuild, or (no CURRENT at all) build one
    if not (name == "CURRENT" and damage == "missing"):
        assert "Run `rag index --rebuild` to rebuild it." in message

    code, out, err = run_cli(capsys, "index", "--rebuild", *flags)
    assert code == 0, err
    index = load_index(settings.index_dir, fake_model)
    assert sorted(index.documents) == GOOD_DOCS
    assistant = Assistant(settings, fake_model)
    assert_answerable(assistant)


def test_a_damaged_index_is_reported_by_rag_ask_with_the_fix(settings, fake_model, capsys):
    flags = ["--corpus", str(settings.corpus_dir), "--index-dir", str(settings.index_dir)]
    run_cli(capsys, "index", *flags)
    flip_byte(rag.indexing.segment_folders(settings.index_dir)[0] / "chunks.faiss")
    code, _, err = run_cli(capsys, "ask", *flags, "Which airship?")
    assert code == 1
    assert "chunks.faiss is damaged (checksum mismatch). Run `rag index --rebuild` to rebuild it." in err


def test_a_manifest_without_checksums_is_refused(settings, embedder):
    refresh_index(settings, embedder)
    manifest_path = current_generation(settings.index_dir) / "manifest.json"
    text = re.sub(r'"chunks.faiss": "[0-9a-f]+",?', "", manifest_path.read_text("utf-8"))
    manifest_path.write_text(text, encoding="utf-8")
    (settings.index_dir / "CURRENT").write_text(current_generation(settings.index_dir).name, encoding="utf-8")
    with pytest.raises(IndexError_, match="no checksum for chunks.faiss"):
        load_index(settings.index_dir, embedder)


def test_loading_never_unpickles_or_evaluates(settings, embedder, monkeypatch):
    refresh_index(settings, embedder)

    def forbidden(*args, **kwargs):
        raise AssertionError("the index loader must not unpickle or evaluate anything")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    monkeypatch.setattr("builtins.eval", forbidden)
    monkeypatch.setattr("builtins.exec", forbidden)
    assistant = Assistant(settings, embedder)
    assert sorted(assistant.index.documents) == GOOD_DOCS
    assert_answerable(assistant)


@pytest.mark.parametrize("module", ["rag/indexing.py", "rag/store.py", "rag/lexical.py", "rag/chat.py"])
def test_the_index_readers_have_no_unpickling_or_eval_in_their_source(module):
    source = (PROJECT_ROOT / module).read_text(encoding="utf-8")
    for pattern in (
        r"import (pickle|joblib|marshal|shelve|dill)",
        r"(pickle|joblib|marshal|shelve|torch)\.load",
        r"allow_pickle",
    ):
        assert not re.search(pattern, source), f"{module} uses {pattern}"
    assert not re.search(r"(?<![\w.])(eval|exec)\(", source), module


# --------------------------------------------------------------------------- crashes, simulated


class Crash(BaseException):
    """A stand-in for SIGKILL: no `except Exception` catches it, no cleanup code runs after it."""


CRASH_POINTS = [
    (os, "fsync"),
    (os, "rename"),
    (os, "replace"),
    (shutil, "rmtree"),
    (rag.indexing.VectorStore, "save"),
    (rag.indexing, "_fsync_dir"),
]


def fingerprint(index) -> tuple:
    """What makes a generation itself: its documents, chunks and vector ids."""
    return (
        tuple(sorted((d, m["sha256"]) for d, m in index.documents.items())),
        tuple(c.chunk_id for c in index.chunks),
        tuple(sorted(index.chunk_vectors.ids().tolist())),
        tuple(sorted(index.sentence_vectors.ids().tolist())),
    )


def edit_corpus(corpus: Path) -> None:
    (corpus / "beta.md").unlink()
    (corpus / "alpha.txt").write_text(
        (corpus / "alpha.txt").read_text("utf-8").replace("twice a year", "every spring"), "utf-8"
    )
    (corpus / "new.txt").write_text("Lighthouse notes\nThe keeper lights the lamp at dusk.\n", encoding="utf-8")


def patch_crash_points(mp: pytest.MonkeyPatch, crash_at: int | None = None) -> list[int]:
    """Count calls to every crash point; raise Crash at call number `crash_at` (1-based)."""
    calls: list[int] = []
    for owner, name in CRASH_POINTS:
        real = getattr(owner, name)

        def step(*args, _real=real, **kwargs):
            calls.append(1)
            if len(calls) == crash_at:
                raise Crash
            return _real(*args, **kwargs)

        mp.setattr(owner, name, step)
    return calls


@pytest.mark.parametrize("phase", ["first build", "refresh"])
def test_a_crash_at_any_step_of_writing_leaves_the_old_or_the_new_generation(settings, embedder, phase):
    """Crash at the n-th file-system step of writing, for every n: never a mix, and the next run completes."""
    reference = settings.with_(index_dir=settings.index_dir.parent / "reference")
    old_copy = settings.index_dir.parent / "old-copy"
    old = None
    if phase == "refresh":
        refresh_index(reference, embedder)
        old = fingerprint(load_index(reference.index_dir, embedder))
        shutil.copytree(reference.index_dir, old_copy)
        edit_corpus(settings.corpus_dir)
    with pytest.MonkeyPatch.context() as mp:
        calls = patch_crash_points(mp)
        refresh_index(reference, embedder)
    steps = len(calls)
    new = fingerprint(load_index(reference.index_dir, embedder))
    assert old != new

    outcomes = {"old": 0, "new": 0, "none": 0}
    for step in range(1, steps + 1):
        index_dir = settings.index_dir.parent / f"crash-{step}"
        trial = settings.with_(index_dir=index_dir)
        if phase == "refresh":
            shutil.copytree(old_copy, index_dir)
        with pytest.MonkeyPatch.context() as mp:
            patch_crash_points(mp, crash_at=step)
            with pytest.raises(Crash):
                refresh_index(trial, embedder)

        if current_generation(index_dir) is None:
            assert phase == "first build"
            outcomes["none"] += 1
        else:
            got = fingerprint(load_index(index_dir, embedder))
            assert got in (old, new), f"a crash at step {step} left a mix"
            outcomes["old" if got == old else "new"] += 1
        refresh_index(trial, embedder)  # the following run completes
        assert fingerprint(load_index(index_dir, embedder)) == new
        generations = sorted(p.name for p in index_dir.iterdir() if p.name.startswith(("gen-", ".gen-")))
        assert generations == [current_generation(index_dir).name]
    assert outcomes["new"] >= 1 and outcomes["old" if phase == "refresh" else "none"] >= 1, outcomes


# --------------------------------------------------------------------------- concurrency


def test_a_second_writer_waits_with_a_message_and_neither_corrupts(settings, embedder, monkeypatch):
    refresh_index(settings, embedder)
    (settings.corpus_dir / "new.txt").write_text("Lighthouse notes\nThe keeper lights the lamp.\n", "utf-8")
    waiting = threading.Event()

    class Stderr:
        def write(self, text: str) -> int:
            if "waiting for another `rag index`" in text:
                waiting.set()
            return len(text)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", Stderr())
    result = {}
    with index_lock(settings.index_dir):
        with pytest.raises(IndexError_, match="another `rag index` is updating"):
            with index_lock(settings.index_dir, wait=False):
                pass
        writer = threading.Thread(target=lambda: result.update(report=refresh_index(settings, embedder)))
        writer.start()
        assert waiting.wait(30), "the second writer neither waited with a message nor stopped"
        assert writer.is_alive()
    writer.join(30)
    assert result["report"].added == ["new.txt"]
    assert "new.txt" in load_index(settings.index_dir, embedder).documents


def test_questions_during_a_refresh_are_answered_from_the_previous_generation(settings, embedder):
    entered, release = threading.Event(), threading.Event()

    class SlowEmbedder(type(embedder)):
        blocking = False

        def embed_passages(self, texts):
            if self.blocking:
                entered.set()
                release.wait(30)
            return super().embed_passages(texts)

    slow = SlowEmbedder()
    assistant = Assistant(settings, slow)
    assistant.refresh()
    before = assistant.index.path
    (settings.corpus_dir / "new.txt").write_text("Lighthouse notes\nThe keeper lights the lamp at dusk.\n", "utf-8")
    slow.blocking = True
    refresher = threading.Thread(target=assistant.refresh)
    refresher.start()
    try:
        assert entered.wait(30)
        assert assistant.index.path == before
        assert_answerable(assistant)
        assert "new.txt" not in assistant.index.documents
    finally:
        slow.blocking = False
        release.set()
        refresher.join(30)
    assert assistant.index.path != before
    answer = assistant.ask("When does the keeper light the lamp?")
    assert "new.txt" in {c.doc_id for c in answer.citations or answer.nearest}  # the new generation answers


def test_a_reader_racing_a_writer_loads_the_new_generation(settings, embedder, monkeypatch):
    """The writer deletes the generation a reader is verifying: the reader moves to the new one."""
    refresh_index(settings, embedder)
    (settings.corpus_dir / "new.txt").write_text("Lighthouse notes\nThe keeper lights the lamp.\n", "utf-8")
    real_checksum = rag.indexing._checksum
    raced = []

    def checksum_after_a_refresh(path):
        if not raced:
            raced.append(1)
            refresh_index(settings, embedder)  # replaces CURRENT and deletes `path`'s generation
        return real_checksum(path)

    monkeypatch.setattr(rag.indexing, "_checksum", checksum_after_a_refresh)
    index = load_index(settings.index_dir, embedder)
    assert raced and "new.txt" in index.documents


def test_a_skipped_file_does_not_make_the_index_stale_until_it_changes(settings, embedder):
    bad = settings.corpus_dir / "binary.txt"
    bad.write_bytes(b"\x00\x01\x02 not text \x00" * 10)
    assistant = Assistant(settings, embedder)
    report = assistant.refresh()
    assert [e.doc_id for e in report.skipped] == ["binary.txt"]
    assert "binary.txt" in assistant.index.manifest["skipped"]
    assert not assistant.is_stale()  # else every question re-reads the corpus

    bad.write_text("Now it is text about the lighthouse keeper.\n", encoding="utf-8")
    assert assistant.is_stale()
    fixed = assistant.refresh()
    assert fixed.added == ["binary.txt"] and not fixed.skipped
    assert "binary.txt" not in assistant.index.manifest["skipped"]
    assert not assistant.is_stale()


def test_a_file_that_becomes_unreadable_records_it_without_re_embedding(settings, embedder):
    assistant = Assistant(settings, embedder)
    assistant.refresh()
    (settings.corpus_dir / "binary.txt").write_bytes(b"\x00\x00\x00")
    assert assistant.is_stale()
    report = assistant.refresh()
    assert not report.changed and [e.doc_id for e in report.skipped] == ["binary.txt"]
    assert report.embedded_chunks == 0
    assert not assistant.is_stale()


def test_a_model_load_error_ending_in_a_full_stop_reads_as_one_sentence(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from rag.embeddings import EmbeddingModelError, _load_sentence_transformer

    def refuse(path, device):
        raise OSError("no-such-model is not a valid model identifier.")

    quiet = SimpleNamespace(set_verbosity_error=lambda: None, disable_progress_bar=lambda: None)
    monkeypatch.setitem(sys.modules, "sentence_transformers", SimpleNamespace(SentenceTransformer=refuse))
    monkeypatch.setitem(sys.modules, "transformers", SimpleNamespace(logging=quiet))
    with pytest.raises(EmbeddingModelError) as info:
        _load_sentence_transformer.__wrapped__("no-such-model", str(tmp_path))
    assert "valid model identifier. Use a local" in str(info.value)
    assert ".." not in str(info.value)
