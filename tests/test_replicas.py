"""Replicas: processes that answer from one index another process writes, following its new generations.

A reader Assistant notices that CURRENT names a new generation and swaps it in, in the background,
without a restart; a question in flight finishes on the generation it started with; a new
generation that cannot be loaded leaves the old one serving, with the reason logged. A read-only
(replica) Assistant and Library write nothing to the index folder and wait for an index that does
not exist yet. The writer keeps replaced generations for a grace period before deleting them.
The last test runs two `rag serve --replica` processes and `rag index` beside them, over HTTP.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import stop_process

import rag.indexing
import rag.live_index
from rag import collection
from rag.assistant import Assistant, ReadOnlyIndexError
from rag.collection import Library, NotReady
from rag.config import PROJECT_ROOT
from rag.history import History
from rag.indexing import RETIRED, current_generation, refresh_index, segment_folders
from rag.live_index import RETRY_FAILED_S

NEW_DOC = "Okapi harbour notes\nThe okapi ferry leaves the harbour at seven every morning.\n"
NEW_QUESTION = "When does the okapi ferry leave the harbour?"
OLD_QUESTION = "What carries tourists between the islands?"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under `folder` with its size and modification time: what a write would change."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def wait_for(condition, seconds: float = 15, what: str = "the condition") -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        time.sleep(0.02)


def cited(answer) -> set[str]:
    return {c.doc_id for c in answer.citations or answer.nearest}


@pytest.fixture
def writer(settings, embedder) -> Assistant:
    """The one process that writes the index (as `rag index` or a `rag serve` without --replica would)."""
    assistant = Assistant(settings.with_(generation_grace_s=600), embedder)
    assistant.refresh()
    return assistant


@pytest.fixture
def replica(settings, embedder, writer) -> Assistant:
    """A read-only Assistant over the writer's index that looks at CURRENT before every question."""
    reader = Assistant(settings.with_(reload_check_s=0), embedder, read_only=True)
    assert reader.index.path == writer.index.path
    return reader


def add_document(settings) -> None:
    (settings.corpus_dir / "okapi.txt").write_text(NEW_DOC, encoding="utf-8")


# --------------------------------------------------------------------------- following CURRENT


def test_a_generation_another_process_wrote_is_swapped_in_at_the_next_question(settings, writer, replica):
    before = replica.index.path
    assert "okapi.txt" not in cited(replica.ask(NEW_QUESTION))
    add_document(settings)
    writer.refresh()  # as `rag index` in another process: a new generation, CURRENT moved
    # The question that notices answers from the generation it had; the new one loads in the background.
    wait_for(lambda: replica.index.path != before, what="the replica's swap")
    assert replica.index.path == current_generation(settings.index_dir)
    assert cited(replica.ask(NEW_QUESTION)) >= {"okapi.txt"}


def test_a_generation_written_directly_is_picked_up_and_the_check_is_rate_limited(
    settings, embedder, writer, monkeypatch
):
    reader = Assistant(settings.with_(reload_check_s=3600), embedder, read_only=True)
    first = reader.index.path
    add_document(settings)
    refresh_index(settings.with_(generation_grace_s=600), embedder)  # no Assistant: the files only
    reads = []
    real = rag.live_index.read_current

    def counted(index_dir):
        reads.append(index_dir)
        return real(index_dir)

    monkeypatch.setattr(rag.live_index, "read_current", counted)
    for _ in range(50):
        assert reader.index.path == first  # looked at most once an hour: not yet
    assert reads == []
    assert reader.follow_index()  # what the check (or the watcher) does once due
    assert reader.index.path == current_generation(settings.index_dir) != first
    assert not reader.follow_index()  # nothing new since


def test_a_question_in_flight_finishes_on_the_generation_it_started_with(settings, writer, replica, monkeypatch):
    add_document(settings)
    old = replica.index
    real_retrieve = Assistant._retrieve
    seen = []

    def retrieve_while_a_new_generation_lands(self, index, query, depth):
        if not seen:
            writer.refresh()
            assert replica.follow_index()  # swapped in while this question is being answered
        seen.append(index)
        return real_retrieve(self, index, query, depth)

    monkeypatch.setattr(Assistant, "_retrieve", retrieve_while_a_new_generation_lands)
    first = replica.ask(NEW_QUESTION)
    assert all(index is old for index in seen)  # every step of that question read the old generation
    assert "okapi.txt" not in cited(first)
    assert "okapi.txt" in cited(replica.ask(NEW_QUESTION))
    assert seen[-1] is not old


def test_a_damaged_new_generation_keeps_the_old_one_serving_and_says_why(settings, writer, replica, capsys):
    old = replica.index.path
    add_document(settings)
    writer.refresh()
    damaged = current_generation(settings.index_dir)
    newest = segment_folders(settings.index_dir)[-1]  # the segment written for the new document
    data = bytearray((newest / "chunks.faiss").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (newest / "chunks.faiss").write_bytes(bytes(data))

    assert not replica.follow_index()
    err = capsys.readouterr().err
    assert f"cannot load generation {damaged.name}" in err and "checksum mismatch" in err
    assert f"still answering from {old.name}" in err
    assert replica.index.path == old and "okapi.txt" not in cited(replica.ask(NEW_QUESTION))
    # Not re-read (and re-checksummed) on every question: once a minute.
    assert not replica.follow_index() and capsys.readouterr().err == ""
    replica._live._failed = (replica._live._failed[0], time.monotonic() - RETRY_FAILED_S)
    assert not replica.follow_index() and "cannot load generation" in capsys.readouterr().err
    # The writer repairs it with a new generation: that one is taken.
    writer.refresh(rebuild=True)
    assert replica.follow_index()
    assert "okapi.txt" in cited(replica.ask(NEW_QUESTION))


def test_a_generation_of_another_model_is_refused_and_the_old_one_kept(settings, writer, replica, make_embedder):
    old = replica.index.path
    Assistant(settings.with_(generation_grace_s=600), make_embedder(name="other-model")).refresh()
    assert current_generation(settings.index_dir) != old
    assert not replica.follow_index()
    assert replica.index.path == old and "alpha.txt" in cited(replica.ask(OLD_QUESTION))


def test_an_idle_server_follows_from_its_watcher(settings, embedder, writer):
    reader = Assistant(settings.with_(reload_check_s=0.05), embedder, read_only=True)
    before = reader.index.path
    reader.watch_index()
    add_document(settings)
    writer.refresh()
    # No question is asked: the watcher alone moves it (it looks every second at most).
    wait_for(lambda: reader._live.loaded.path != before, seconds=10, what="the watcher's swap")


# --------------------------------------------------------------------------- replicas write nothing


def test_a_replica_never_writes_the_index_and_refuses_to_refresh(settings, writer, replica):
    add_document(settings)  # the corpus changed, but only the writer may index it
    before = snapshot(settings.index_dir)
    assert replica.ensure_index() is None
    with pytest.raises(ReadOnlyIndexError, match="This server is a replica"):
        replica.refresh()
    replica.ask(NEW_QUESTION)
    assert snapshot(settings.index_dir) == before


def test_a_replica_waits_for_an_index_that_does_not_exist_yet(settings, embedder):
    reader = Assistant(settings.with_(reload_check_s=0), embedder, read_only=True)
    stages, done = [], {}
    waiter = threading.Thread(target=lambda: done.update(index=reader.wait_for_index(stages.append)))
    waiter.start()
    wait_for(lambda: stages, what="a report of the wait")
    assert "waiting for the index in" in stages[0]
    assert not settings.index_dir.exists()  # waiting writes nothing, not even the lock file
    Assistant(settings, embedder).refresh()  # the writer builds it
    waiter.join(10)
    assert not waiter.is_alive() and done["index"].path == current_generation(settings.index_dir)
    assert "alpha.txt" in cited(reader.ask(OLD_QUESTION))


def test_a_replica_library_says_a_collection_has_no_index_yet_and_builds_none(settings, embedder):
    collection.create("team")
    folder = collection.get("team").folder
    (folder / "corpus" / "okapi.txt").write_text(NEW_DOC, encoding="utf-8")
    default = Assistant(settings, embedder, read_only=True)
    Assistant(settings, embedder).refresh()
    library = Library(settings, default, replica=True)
    with pytest.raises(NotReady, match="has no index yet: this server is a replica"):
        library.assistant("team", None)
    assert not (folder / "index").exists()
    Assistant(collection.get("team").settings(settings), embedder).refresh()  # `rag index --collection team`
    assert "okapi.txt" in cited(library.assistant("team", None).ask(NEW_QUESTION))


def test_a_replica_page_has_no_upload_delete_or_refresh_and_their_calls_are_refused(settings, embedder, tmp_path):
    from rag import web

    collection.create("team")
    (collection.get("team").folder / "corpus" / "seed.txt").write_text("A seed note.\n", encoding="utf-8")
    Assistant(collection.get("team").settings(settings), embedder).refresh()
    Assistant(settings, embedder).refresh()
    library = Library(settings, Assistant(settings, embedder, read_only=True), replica=True)
    demo = web.build_app(library, History(tmp_path / "chat.sqlite3"))
    hidden = {b.elem_id for b in demo.blocks.values() if getattr(b, "visible", True) is False}
    assert {"upload", "refresh", "refresh-status"} <= hidden
    handlers = {f.name: f.fn for f in demo.fns.values()}
    request = type("Request", (), {"username": None})()
    note = tmp_path / "note.txt"
    note.write_text("A note about the okapi ferry.\n", encoding="utf-8")
    team_index = collection.get("team").folder / "index"
    before = snapshot(team_index), snapshot(settings.index_dir)

    report, *_ = handlers["upload"]([str(note)], "team", request, progress=lambda *a, **k: None)
    assert "✗ note.txt: This server is a replica" in report
    status, row, *_ = handlers["delete_document"]("seed.txt", "team", request)
    assert "This server is a replica" in status and not row["visible"]
    status, row = handlers["ask_delete"]("seed.txt", "team", request)
    assert "This server is a replica" in status
    *_, message = handlers["refresh"]("team", request, progress=lambda *a, **k: None)
    assert "This server is a replica" in message
    *_, panel, _ = handlers["switch_collection"]("team", request)
    assert "This server is a replica" in panel
    assert not (collection.get("team").folder / "corpus" / "note.txt").exists()
    assert (collection.get("team").folder / "corpus" / "seed.txt").exists()
    assert (snapshot(team_index), snapshot(settings.index_dir)) == before


def test_rag_serve_replica_starts_without_a_corpus_and_never_refreshes(settings, embedder, writer, monkeypatch, capsys):
    from rag import web

    served = {}

    class Page:  # stands in for the Gradio page: main() builds, launches, then serves until the index is ready
        def __init__(self, library, *args) -> None:
            served["library"] = library

        def queue(self, **kwargs):
            return self

        def launch(self, **kwargs):
            pass

        def block_thread(self):
            wait_for(lambda: served["library"].status("default") is None, what="the replica's start")

    add_document(settings)  # the corpus changed: a writer would refresh at start, a replica must not
    before = snapshot(settings.index_dir)
    monkeypatch.setattr("rag.assistant.load_embedder", lambda name, cache_dir, precision: embedder)
    monkeypatch.setattr(web, "build_app", Page)
    monkeypatch.setenv("RAG_INDEX_DIR", str(settings.index_dir))
    monkeypatch.setenv("RAG_CORPUS_DIR", str(settings.corpus_dir.parent / "not-mounted-here"))
    monkeypatch.setenv("RAG_REPLICA", "1")
    monkeypatch.setenv("RAG_RERANK_SENTENCES", "0")  # no USE model to load while warming up
    assert web.main([]) == 0
    library = served["library"]
    assert library.replica and library.failure("default") is None
    assistant = library.assistant("default", None)
    assert assistant.read_only and assistant.index.path == writer.index.path
    assert "replica of the index in" in capsys.readouterr().err
    assert snapshot(settings.index_dir) == before


# --------------------------------------------------------------------------- the grace period


def generations(index_dir: Path) -> list[str]:
    return sorted(p.name for p in index_dir.glob("gen-*"))


def test_a_replaced_generation_is_kept_for_the_grace_period_then_removed(settings, embedder):
    graced = settings.with_(generation_grace_s=60)
    refresh_index(graced, embedder)
    first = current_generation(settings.index_dir)
    add_document(settings)
    refresh_index(graced, embedder)
    second = current_generation(settings.index_dir)
    assert generations(settings.index_dir) == [first.name, second.name]
    assert (first / RETIRED).is_file() and not (second / RETIRED).exists()
    assert rag.indexing.load_index(settings.index_dir, embedder).path == second

    (first / RETIRED).write_text(f"{time.time() - 30}\n", encoding="ascii")  # replaced 30 s ago
    refresh_index(graced, embedder)  # nothing to index; the sweep keeps `first`, 30 s into its 60
    assert generations(settings.index_dir) == [first.name, second.name]
    (first / RETIRED).write_text(f"{time.time() - 61}\n", encoding="ascii")
    refresh_index(graced, embedder)  # `rag index` with nothing to do still sweeps
    assert generations(settings.index_dir) == [second.name]
    # Grace 0: a replaced generation goes as soon as CURRENT moves.
    (settings.corpus_dir / "okapi.txt").unlink()
    refresh_index(settings.with_(generation_grace_s=0), embedder)
    assert generations(settings.index_dir) == [current_generation(settings.index_dir).name]


def test_a_replica_still_on_a_kept_generation_answers_after_the_writer_moved_on(settings, writer, replica):
    old = replica.index.path
    add_document(settings)
    writer.refresh()
    writer.refresh(rebuild=True)  # two generations later, within the grace: the replica's is kept
    assert old.is_dir() and set(generations(settings.index_dir)) >= {old.name}
    assert replica._live.loaded.path == old
    assert "alpha.txt" in cited(replica.ask(OLD_QUESTION))  # from `old`; it notices, and loads the live one
    wait_for(lambda: replica._live.loaded.path == writer.index.path, what="the replica's swap")
    # A replica that starts now (mid-grace) loads the live one, not a kept one.
    assert Assistant(replica.settings, replica.embedder, read_only=True).index.path == writer.index.path


# --------------------------------------------------------------------------- two servers, over HTTP


def _rag() -> list[str]:
    return [sys.executable, "-m", "rag.cli"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ask(url: str, question: str) -> tuple[str, str]:
    """(sources panel, hint) of the chat's answer to `question`, asked through the app's HTTP API."""
    from gradio_client import Client

    # The API's inputs leave out gr.State (the question, the chat so far, the collection), and so do
    # its outputs: question, chat, sources, picker, hint, conversations.
    result = Client(url, verbose=False).predict(question, [], "default", api_name="/respond")
    return str(result[2]), str(result[4])


@pytest.mark.integration
def test_two_replica_servers_follow_rag_index_in_a_third_process(tmp_path, model_cache_dir):
    from conftest import CORPUS

    corpus, index_dir = tmp_path / "corpus", tmp_path / "shared-index"
    corpus.mkdir()
    for name, text in CORPUS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    # This checkout's code in every process, whatever is installed; the model converted once per session.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env |= {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")])),
        "RAG_CACHE_DIR": str(model_cache_dir),
        "RAG_CORPUS_DIR": str(corpus),
        "RAG_INDEX_DIR": str(index_dir),
        "RAG_RERANK_SENTENCES": "0",  # the USE model is not what this tests: quicker starts
        "RAG_RELOAD_CHECK_SECONDS": "1",
    }

    def run_index() -> None:
        done = subprocess.run(
            [*_rag(), "index"], cwd=tmp_path, env={**env, "RAG_HOME": str(tmp_path / "writer")}, capture_output=True
        )
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]

    servers, logs, urls = [], [], []
    try:
        # Started before the index exists: each waits for it, writing nothing.
        for n in range(2):
            port = _free_port()
            log = tmp_path / f"replica-{n}.log"
            with log.open("wb") as out:
                servers.append(
                    subprocess.Popen(
                        [*_rag(), "serve", "--replica", "--host", "127.0.0.1", "--port", str(port)],
                        cwd=tmp_path,
                        env={**env, "RAG_HOME": str(tmp_path / f"replica-{n}")},  # own conversations
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )
            logs.append(log)
            urls.append(f"http://127.0.0.1:{port}/")

        def answered(n: int, question: str, doc_id: str) -> bool:
            assert servers[n].poll() is None, f"replica {n} exited:\n{logs[n].read_text()[-3000:]}"
            try:
                sources, hint = _ask(urls[n], question)
            except Exception:  # noqa: BLE001 - not serving yet
                return False
            return not hint and doc_id in sources

        for n in range(2):
            wait_for(lambda n=n: "waiting for the index in" in logs[n].read_text(), 120, f"replica {n} waiting")
        assert not index_dir.exists()

        run_index()  # a third process builds the index
        for n in range(2):
            wait_for(lambda n=n: answered(n, "What carries tourists between the islands?", "alpha.txt"), 90)

        # An upload through a replica's API is refused; nothing reaches the corpus.
        from gradio_client import Client, handle_file

        note = tmp_path / "upload" / "note.txt"
        note.parent.mkdir()
        note.write_text("An uploaded note.\n", encoding="utf-8")
        report = Client(urls[0], verbose=False).predict([handle_file(str(note))], "default", api_name="/upload")[0]
        assert "This server is a replica" in str(report) and not (corpus / "note.txt").exists()

        (corpus / "okapi.txt").write_text(NEW_DOC, encoding="utf-8")
        run_index()  # a new generation, made current by the third process
        for n in range(2):
            wait_for(lambda n=n: answered(n, NEW_QUESTION, "okapi.txt"), 60, f"replica {n} on the new generation")
        live = current_generation(index_dir).name
        for n, server in enumerate(servers):
            assert server.poll() is None  # no restart
            assert f"now answering from {live}" in logs[n].read_text()
        # The writer kept the replaced generation for the replicas (RAG_GENERATION_GRACE_SECONDS's default).
        assert len(generations(index_dir)) == 2
    finally:
        for server in servers:
            stop_process(server)
    shutil.rmtree(index_dir, ignore_errors=True)
