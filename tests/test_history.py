"""The conversation and feedback store: ownership, persistence, concurrency, and the eval export."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import pytest

from rag.cli import main
from rag.evaluate import load_qa
from rag.history import History, NotFound, eval_case, title_for

CITATIONS = [{"n": 1, "doc_id": "002.txt", "title": "成果展", "text": "展示了585项重大科技成果。"}]


@pytest.fixture
def history(tmp_path: Path) -> History:
    return History(tmp_path / "chat.sqlite3")


def _exchange(history: History, user: str, collection: str = "default", question: str = "How many?") -> tuple[int, int]:
    conversation = history.create(user, collection, question).id
    message = history.add_message(conversation, user, question, "585. [1]", CITATIONS, "585. <sup>1</sup>")
    return conversation, message


def test_conversations_persist_in_the_file_and_list_the_latest_first(tmp_path: Path):
    path = tmp_path / "chat.sqlite3"
    first = History(path)
    older, _ = _exchange(first, "alice", question="first question")
    newer, _ = _exchange(first, "alice", question="second question")
    reopened = History(path)  # a server restart
    assert [c.id for c in reopened.conversations("alice", "default")] == [newer, older]
    [message] = reopened.messages(older, "alice")
    assert (message.question, message.answer, message.citations) == ("first question", "585. [1]", CITATIONS)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_user_sees_and_changes_only_their_own_conversations(history: History):
    mine, message = _exchange(history, "alice")
    _exchange(history, "bob")
    assert [c.user for c in history.conversations("bob", "default")] == ["bob"]
    for attempt in (
        lambda: history.messages(mine, "bob"),
        lambda: history.rename(mine, "bob", "taken"),
        lambda: history.delete(mine, "bob"),
        lambda: history.add_message(mine, "bob", "q", "a", [], "a"),
        lambda: history.rate(message, "bob", -1),
    ):
        with pytest.raises(NotFound):
            attempt()
    assert history.get(mine, "alice").title == "How many?"  # untouched


def test_conversations_are_kept_per_collection(history: History):
    _exchange(history, "", "default")
    other, _ = _exchange(history, "", "contracts")
    assert [c.id for c in history.conversations("", "contracts")] == [other]


def test_rename_and_delete(history: History):
    conversation, message = _exchange(history, "alice")
    history.rename(conversation, "alice", "  Forum   achievements ")
    assert history.get(conversation, "alice").title == "Forum achievements"
    with pytest.raises(ValueError, match="cannot be empty"):
        history.rename(conversation, "alice", "   ")
    history.rate(message, "alice", -1)
    history.delete(conversation, "alice")
    assert history.conversations("alice", "default") == []
    assert [f.question for f in history.feedback()] == ["How many?"]  # feedback outlives its conversation


def test_a_long_first_question_makes_a_short_one_line_title():
    title = title_for("word " * 100 + "\nend")
    assert len(title) == 80 and title.endswith("…") and "\n" not in title


def test_a_rating_can_be_changed_and_commented_and_is_stored_with_its_context(history: History):
    conversation = history.create("alice", "contracts", "How many achievements?").id
    history.add_message(conversation, "alice", "How many achievements?", "585. [1]", CITATIONS, "x")
    follow_up = history.add_message(conversation, "alice", "And Zhejiang?", "165. [1]", CITATIONS, "y")
    history.rate(follow_up, "alice", 1)
    history.rate(follow_up, "alice", -1, "should say 165 of 585")
    history.rate(follow_up, "alice", -1)  # a second click keeps the comment
    with pytest.raises(ValueError):
        history.rate(follow_up, "alice", 0)
    [feedback] = history.feedback(rating=-1)
    assert (feedback.rating, feedback.comment, feedback.collection) == (-1, "should say 165 of 585", "contracts")
    assert feedback.history == ["How many achievements?"]
    assert history.messages(conversation, "alice")[1].rating == -1
    history.comment(follow_up, "alice", "wrong province")
    assert history.feedback()[0].comment == "wrong province"
    with pytest.raises(NotFound, match="give 👍 or 👎 first"):
        history.comment(follow_up - 1, "alice", "no rating yet")


def test_threads_writing_at_once_lose_nothing(history: History):
    conversation = history.create("", "default", "q").id
    errors: list[Exception] = []

    def write(n: int) -> None:
        try:
            for i in range(20):
                history.add_message(conversation, "", f"q{n}-{i}", "a", [], "a")
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(history.messages(conversation, "")) == 120


def test_a_thumbs_down_becomes_an_eval_case_that_rag_eval_refuses_until_its_answer_is_filled_in(
    history: History, tmp_path: Path
):
    conversation = history.create("", "default", "论坛展示了多少项成果?").id
    history.add_message(conversation, "", "论坛展示了多少项成果?", "585项。[1]", CITATIONS, "x")
    liked = history.add_message(conversation, "", "那浙江呢?", "165项。[1]", CITATIONS, "y")
    disliked = history.add_message(conversation, "", "那安徽呢?", "132项。[1]", CITATIONS, "z")
    history.rate(liked, "", 1)
    history.rate(disliked, "", -1, "安徽是161项")
    [row] = [eval_case(f) for f in history.feedback(rating=-1)]
    assert row["question"] == "那安徽呢?" and row["history"] == ["论坛展示了多少项成果?", "那浙江呢?"]
    assert row["answers"] is None and row["doc_ids"] == [] and row["match"] == "any"
    assert {"feedback", "q-zh", "multiturn"} <= set(row["tags"])
    assert row["feedback"]["given_answer"] == "132项。[1]" and row["feedback"]["cited_doc_ids"] == ["002.txt"]
    assert row["feedback"]["comment"] == "安徽是161项"
    path = tmp_path / "cases.jsonl"
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match="fill in 'answers'"):
        load_qa(path)
    row["answers"] = ["161"]
    path.write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    [loaded] = load_qa(path)
    assert loaded["answers"] == ["161"] and loaded["history"] == row["history"]


def test_rag_feedback_export_writes_only_the_thumbs_down(isolated_rag_home: Path, tmp_path: Path, capsys):
    history = History()  # the default file under RAG_HOME, as the chat uses it
    _, up = _exchange(history, "alice", question="liked question")
    _, down = _exchange(history, "bob", question="disliked question")
    history.rate(up, "alice", 1)
    history.rate(down, "bob", -1)
    out = tmp_path / "out" / "feedback.jsonl"
    assert main(["feedback", "export", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["question"] for r in rows] == ["disliked question"]
    assert "wrote 1 👎 answers" in capsys.readouterr().out
