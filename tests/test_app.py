"""The chat's answer handler, driven directly with a stand-in assistant (no server, no browser)."""

import copy
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

    def queue(self, **kwargs):
        return self

    def launch(self, **kwargs):
        LaunchRecorder.launched = True

    def block_thread(self):
        pass  # app.main serves until interrupted; the recorder returns at once


def test_the_app_serves_an_existing_index_with_a_warning_when_the_corpus_folder_is_missing(
    settings, embedder, monkeypatch, capsys, tmp_path
):
    from rag.assistant import Assistant

    Assistant(settings, embedder).refresh()
    monkeypatch.setattr("rag.assistant.load_embedder", lambda name, cache_dir: embedder)
    monkeypatch.setattr(web, "build_app", lambda *args: LaunchRecorder())
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
    monkeypatch.setattr("rag.assistant.load_embedder", lambda name, cache_dir: embedder)
    monkeypatch.setenv("RAG_CORPUS_DIR", str(tmp_path / "unmounted"))
    assert web.main([]) == 1
    assert "does not exist" in capsys.readouterr().err
