"""The chat's answer handler, driven directly with a stand-in assistant (no server, no browser)."""

import copy
import time
import zipfile
from types import SimpleNamespace

from rag import web
from rag.answer import Answer, Citation
from rag.history import History


def _citation() -> Citation:
    return Citation(1, "002.txt", "成果展", "c1", "展示了585项重大科技成果。", 0, 12, 0.9, ((0, 12),))


class StreamingAssistant:
    """Yields an LLM's deltas, then the verified Answer, as Assistant.ask_stream does."""

    settings = SimpleNamespace(corpus_dir=None)

    def __init__(self, deltas: list[str], final: Answer) -> None:
        self.deltas, self.final, self.histories = deltas, final, []

    def ask_stream(self, question, history=()):
        self.histories.append(list(history))
        yield from self.deltas
        yield self.final

    @property
    def index(self):
        return SimpleNamespace(documents={"002.txt": {"title": "成果展"}})


class OneCollection:
    """Stands in for rag.collection.Library: every collection is answered by `assistant`."""

    def __init__(self, assistant) -> None:
        self.assistant_ = assistant

    def assistant(self, name, user):
        return self.assistant_

    def collection(self, name, user):
        return SimpleNamespace(name=name)


def _handler(assistant, name: str):
    demo = web.build_app(OneCollection(assistant), History())
    return next(f.fn for f in demo.fns.values() if f.name == name)


def _updates(assistant, message, chat, asked) -> list[tuple]:
    """Every update the handler yields, copied as it is yielded (the handler reuses its lists)."""
    respond = _handler(assistant, "respond")
    return [copy.deepcopy(update) for update in respond(message, chat, asked, "default", None, [], None)]


def test_llm_deltas_stream_as_a_marked_draft_then_the_verified_answer_replaces_them():
    final = Answer("How many?", "585 achievements were shown. [1]", False, [_citation()], [], language="en")
    assistant = StreamingAssistant(["<b>585</b> achieve", "ments were shown. [1]"], final)
    updates = _updates(assistant, "How many?", [], [])
    messages = [u[1][-1]["content"] for u in updates if isinstance(u[1], list)]
    drafts = [m for m in messages if "checked when the answer is complete" in m]
    assert len(drafts) == 2  # one message per delta, as they arrive
    assert drafts[0].startswith("&#60;b&#62;585&#60;/b&#62; achieve")  # model output renders inert
    assert "ments were shown" in drafts[1]
    assert "checked when the answer is complete" not in messages[-1]
    assert "585 achievements were shown." in messages[-1] and 'class="cite"' in messages[-1]
    assert updates[-1][4] == ["How many?"]  # the question joins the history for follow-ups


def test_the_history_of_earlier_questions_reaches_the_assistant():
    final = Answer("那安徽呢?", "安徽161项。 [1]", False, [_citation()], [], language="zh")
    assistant = StreamingAssistant([], final)
    updates = _updates(assistant, "那安徽呢?", [], ["论坛展示了多少项成果?"])
    assert assistant.histories == [["论坛展示了多少项成果?"]]
    assert "安徽161项" in updates[-1][1][-1]["content"]


class LaunchRecorder:
    """Stands in for the Gradio page: records that main() got as far as serving it."""

    launched = False

    def __init__(self, library=None) -> None:
        self.library = library

    def queue(self, **kwargs):
        return self

    def launch(self, **kwargs):
        LaunchRecorder.launched = True
        assert kwargs["max_file_size"] == 32 * 2**20 and kwargs["enable_monitoring"] is False

    def block_thread(self):
        # app.main serves until interrupted; the recorder returns once the index is ready.
        deadline = time.monotonic() + 30
        while self.library is not None and self.library.status("default") is not None:
            assert time.monotonic() < deadline, "the index was never ready"
            time.sleep(0.01)


def test_the_app_serves_an_existing_index_with_a_warning_when_the_corpus_folder_is_missing(
    settings, embedder, monkeypatch, capsys, tmp_path
):
    from rag.assistant import Assistant

    Assistant(settings, embedder).refresh()
    monkeypatch.setattr("rag.assistant.load_embedder", lambda name, cache_dir, precision: embedder)
    monkeypatch.setattr(web, "build_app", lambda library, *args: LaunchRecorder(library))
    monkeypatch.setenv("RAG_INDEX_DIR", str(settings.index_dir))
    for corpus in (tmp_path / "unmounted", tmp_path / "empty"):
        if corpus.name == "empty":
            corpus.mkdir()
        monkeypatch.setenv("RAG_CORPUS_DIR", str(corpus))
        LaunchRecorder.launched = False
        assert web.main([]) == 0
        assert LaunchRecorder.launched
        err = capsys.readouterr().err
        assert str(corpus) in err and "answering from the existing index" in err


def test_the_app_refuses_to_start_with_no_corpus_and_no_index(monkeypatch, capsys, embedder, tmp_path):
    monkeypatch.setattr("rag.assistant.load_embedder", lambda name, cache_dir, precision: embedder)
    monkeypatch.setenv("RAG_CORPUS_DIR", str(tmp_path / "unmounted"))
    assert web.main([]) == 1
    assert "does not exist" in capsys.readouterr().err


# --------------------------------------------------------------------------- input, access, history


def _handlers(library, history: History) -> dict:
    demo = web.build_app(library, history)
    return {f.name: f.fn for f in demo.fns.values()}


def _as(user: str | None):
    return SimpleNamespace(username=user)


def test_an_empty_or_too_long_question_gets_a_hint_and_never_reaches_the_chat():
    final = Answer("q", "a", False, [_citation()], [], language="en")
    assistant = StreamingAssistant([], final)
    for message, hint in (("  ", "Type a question first"), ("x" * 20_000, "the limit is 2000")):
        [update] = _updates(assistant, message, [], [])
        assert hint in update[6]
        assert "x" * 100 not in update[6]  # the question is not echoed
        assert update[0] == message  # back in the box (the page emptied it as it was sent), to be fixed
        assert all(isinstance(u, type(update[1])) for u in update[1:6])  # everything else left as it was
    assert assistant.histories == []


def test_a_user_cannot_ask_or_open_a_collection_they_are_not_allowed(settings, embedder, tmp_path):
    from rag import collection
    from rag.assistant import Assistant
    from rag.collection import Library

    collection.create("legal", users=["alice"])
    default = Assistant(settings.with_(collection="default"), embedder)
    default.refresh()
    handlers = _handlers(Library(settings, default), History(tmp_path / "chat.sqlite3"))
    [refused] = list(handlers["respond"]("What carries tourists?", [], [], "legal", None, [], _as("bob")))
    assert "no collection named &#x27;legal&#x27;" in refused[6]  # escaped, as all page text
    switched = handlers["switch_collection"]("legal", _as("bob"))
    assert "no collection named &#x27;legal&#x27;" in switched[7] and switched[0]["value"] == []
    page = handlers["load_page"](_as("bob"))
    assert page[0]["choices"] == ["default"]
    assert handlers["load_page"](_as("alice"))[0]["choices"] == ["default", "legal"]


def test_an_answer_is_saved_to_the_users_conversation_and_reopens_with_its_follow_up_context(tmp_path):
    history = History(tmp_path / "chat.sqlite3")
    final = Answer("How many?", "585 were shown. [1]", False, [_citation()], [], language="en")
    handlers = _handlers(OneCollection(StreamingAssistant([], final)), history)
    *_, last = handlers["respond"]("How many?", [], [], "default", None, [], _as("alice"))
    conversation, message_ids = last[7], last[8]
    assert [c.title for c in history.conversations("alice", "default")] == ["How many?"]
    assert history.conversations("bob", "default") == []
    chat, asked, ids, opened, *_ = handlers["open_conversation"](conversation, "default", _as("alice"))
    assert asked == ["How many?"] and ids == message_ids and opened == conversation
    assert "585 were shown." in chat["value"][1]["content"] and chat["feedback_value"] == [None]
    history.rate(message_ids[0], "alice", -1)
    assert handlers["open_conversation"](conversation, "default", _as("alice"))[0]["feedback_value"] == ["Dislike"]
    theirs = handlers["open_conversation"](conversation, "default", _as("bob"))
    assert theirs[0]["value"] == [] and "no longer exists" in theirs[7]  # someone else's is not shown


def test_clearing_forgets_the_sources_and_the_questions_follow_ups_read():
    handlers = _handlers(OneCollection(None), History())
    chat, asked, ids, conversation, sources, spans, viewer, hint, listed = handlers["new_conversation"](
        "default", _as(None)
    )
    assert (chat["value"], chat["feedback_value"], asked, ids, conversation, spans) == ([], [], [], [], None, {})
    assert "src-empty" in sources


def test_serving_beyond_this_machine_needs_a_users_file_or_insecure_open(monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(web, "build_app", lambda *args: LaunchRecorder())
    assert web.main(["--host", "0.0.0.0"]) == 2
    assert "refusing to serve on 0.0.0.0 without login" in capsys.readouterr().err
    monkeypatch.setenv("RAG_AUTH_FILE", str(tmp_path / "missing.json"))
    assert web.main(["--host", "0.0.0.0"]) == 1  # login asked for, but no file: never served open
    assert "missing.json does not exist" in capsys.readouterr().err
    assert web.is_loopback("127.0.0.1") and web.is_loopback("::1") and web.is_loopback("localhost")
    assert not web.is_loopback("0.0.0.0") and not web.is_loopback("192.168.1.5") and not web.is_loopback("example.org")


def test_conversations_are_renamed_and_deleted_from_the_sidebar_by_their_owner_only(tmp_path):
    history = History(tmp_path / "chat.sqlite3")
    handlers = _handlers(OneCollection(None), history)
    mine = history.create("alice", "default", "How many?").id
    listed, box, hint = handlers["rename_conversation"](mine, "Forum figures", "default", _as("alice"))
    assert listed["choices"] == [("Forum figures", mine)] and box == "" and hint == ""
    _, _, refused = handlers["rename_conversation"](mine, "Mine now", "default", _as("bob"))
    assert "no conversation" in refused
    handlers["delete_conversation"](mine, "default", _as("bob"))  # not bob's: nothing happens
    assert history.get(mine, "alice").title == "Forum figures"
    *cleared, listed = handlers["delete_conversation"](mine, "default", _as("alice"))
    assert history.conversations("alice", "default") == [] and listed["choices"] == [] and cleared[0]["value"] == []


def test_the_app_refuses_to_start_on_a_collection_that_does_not_exist(capsys):
    from rag.config import Settings

    assert web.main([], settings=Settings(collection="nosuch")) == 1
    assert "no collection named 'nosuch'" in capsys.readouterr().err


def test_a_thumb_rates_the_saved_answer_it_is_under_and_a_second_click_withdraws_it(tmp_path):
    history = History(tmp_path / "chat.sqlite3")
    handlers = _handlers(OneCollection(None), history)
    conversation = history.create("alice", "default", "How many?").id
    first = history.add_message(conversation, "alice", "How many?", "585. [1]", [], "585")
    second = history.add_message(conversation, "alice", "And Zhejiang?", "165. [1]", [], "165")

    def click(index: int, liked):
        return handlers["rate"]([first, second], _as("alice"), SimpleNamespace(index=index, liked=liked))

    hint, rated, row = click(3, False)  # the second answer: chat messages 2 and 3
    assert rated == second and row["visible"] and "What was wrong?" in hint
    assert [(f.message_id, f.rating) for f in history.feedback()] == [(second, -1)]
    click(1, True)
    assert {f.message_id: f.rating for f in history.feedback()} == {first: 1, second: -1}
    hint, rated, _ = click(3, "")
    assert "withdrawn" in hint and rated is None
    assert [f.message_id for f in history.feedback()] == [first]
    hint, rated, _ = handlers["rate"]([None], _as("alice"), SimpleNamespace(index=1, liked=True))
    assert "not saved" in hint and rated is None


# --------------------------------------------------------------------------- upload, delete, first start


def _library_with(settings, embedder, *names: str, users=None):
    from rag import collection
    from rag.assistant import Assistant
    from rag.collection import Library

    for name in names:
        collection.create(name, users=users)
    default = Assistant(settings.with_(collection="default"), embedder)
    default.refresh()
    return Library(settings, default)


def test_an_upload_is_stored_indexed_and_answered_and_a_refused_file_says_why(settings, embedder, tmp_path):
    library = _library_with(settings, embedder, "team")
    (library.collection("team", None).folder / "corpus" / "seed.txt").write_text("A seed note.\n", encoding="utf-8")
    handlers = _handlers(library, History(tmp_path / "chat.sqlite3"))
    dropped = tmp_path / "dropped"
    dropped.mkdir()
    (dropped / "okapi.txt").write_text("The okapi harbour opens at dawn.\n", encoding="utf-8")
    (dropped / "fake.pdf").write_bytes(b"not a pdf at all")
    # A Word file by its content whose document part is damaged: stored, then skipped by the indexer.
    with zipfile.ZipFile(dropped / "damaged.docx", "w") as zf:
        zf.writestr("word/document.xml", "<w:document><unclosed>")
    paths = [str(dropped / "okapi.txt"), str(dropped / "fake.pdf"), str(dropped / "damaged.docx")]
    report, box, panel, picker, _ = handlers["upload"](paths, "team", _as(None), progress=lambda *a, **k: None)
    assert "✓ okapi.txt" in report and "✗ fake.pdf: not a valid PDF" in report and box is None
    assert "✗ damaged.docx was stored but not indexed: " in report  # with the indexer's reason
    assert "damaged.docx" in panel  # and listed under "Not indexed" in the index panel
    assert "okapi.txt" in panel and "okapi.txt" in [doc_id for _, doc_id in picker["choices"]]
    answer = library.assistant("team", None).ask("When does the okapi harbour open?")
    assert (answer.citations or answer.nearest)[0].doc_id == "okapi.txt"
    # Delete asks first, then removes the file and its passages.
    status, row = handlers["ask_delete"]("okapi.txt", "team", _as(None))
    assert "Delete okapi.txt" in status and row["visible"]
    status, row, panel, *_ = handlers["delete_document"]("okapi.txt", "team", _as(None))
    assert "Deleted okapi.txt" in status and "okapi.txt" not in panel
    assert not (library.collection("team", None).folder / "corpus" / "okapi.txt").exists()


def test_the_default_collection_and_a_user_without_access_take_no_upload_and_no_delete(settings, embedder, tmp_path):
    library = _library_with(settings, embedder, "legal", users=["alice"])
    handlers = _handlers(library, History(tmp_path / "chat.sqlite3"))
    note = tmp_path / "note.txt"
    note.write_text("x\n", encoding="utf-8")
    report, *_ = handlers["upload"]([str(note)], "default", _as(None), progress=lambda *a, **k: None)
    assert "Create a collection to upload into" in report
    report, *_ = handlers["upload"]([str(note)], "legal", _as("bob"), progress=lambda *a, **k: None)
    assert "no collection named &#x27;legal&#x27;" in report
    assert list((library.base.corpus_dir).glob("note.txt")) == []
    assert not any(library.collection("legal", "alice").folder.rglob("note.txt"))
    (library.collection("legal", "alice").folder / "corpus" / "kept.txt").write_text("kept\n", encoding="utf-8")
    status, row, *_ = handlers["delete_document"]("kept.txt", "legal", _as("bob"))
    assert "no collection named" in status and not row["visible"]
    status, row = handlers["ask_delete"]("alpha.txt", "default", _as(None))
    assert "Create a collection" in status and not row["visible"]
    assert (library.collection("legal", "alice").folder / "corpus" / "kept.txt").exists()
    assert (settings.corpus_dir / "alpha.txt").exists()


def test_while_the_index_is_built_the_page_says_so_and_a_question_waits_in_the_box(settings, embedder, tmp_path):
    import threading

    from rag.assistant import Assistant
    from rag.collection import Library

    library = Library(settings)
    release = threading.Event()

    def build(report):
        report("embedding the documents")
        release.wait(10)
        assistant = Assistant(settings, embedder)
        assistant.refresh()
        return assistant

    builder = library.prepare("default", build)
    handlers = _handlers(library, History(tmp_path / "chat.sqlite3"))
    banner, timer, *_ = handlers["startup_status"]("default", _as(None))
    assert "Building the index: embedding the documents" in banner
    [refused] = list(handlers["respond"]("What carries tourists?", [], [], "default", None, [], _as(None)))
    assert refused[0] == "What carries tourists?"  # back in the box
    assert "The index is being built" in refused[6]
    release.set()
    builder.join(10)
    banner, timer, panel, picker, _ = handlers["startup_status"]("default", _as(None))
    assert "Building" not in banner and timer["active"] is False and "alpha.txt" in panel
    *_, last = handlers["respond"]("Which airship carries tourists?", [], [], "default", None, [], _as(None))
    assert "alpha.txt" in last[2]  # answered, with its sources


def test_an_extractive_answer_is_shown_whole_at_once_and_the_box_is_emptied_only_when_the_question_is_sent():
    final = Answer("How many?", "585 were shown. [1]", False, [_citation()], [], language="en")
    updates = _updates(StreamingAssistant([], final), "How many?", [], [])
    assert len(updates) == 2  # the question with "…", then the answer with its sources: no replay
    assert not isinstance(updates[0][0], str) and updates[0][1][-1]["content"] == "…"  # the page empties the box
    assert "585 were shown." in updates[1][1][-1]["content"] and "src-card" in updates[1][2]
    streamed = _updates(StreamingAssistant(["58", "5 were shown. [1]"], final), "How many?", [], [])
    # What the user types while the answer streams is never overwritten.
    assert all(not isinstance(u[0], str) for u in streamed)
