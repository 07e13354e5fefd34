"""Conversations and answer feedback, kept in one SQLite file (`RAG_HOME/chat.sqlite3`).

Stdlib sqlite3 in WAL mode: readers never wait for the writer, and each thread (Gradio's workers
are pooled) keeps its own connection, so threads share nothing but the file. Trade-off: a
connection per call would be simpler, but closing the last one checkpoints the log with an fsync,
~20 ms a saved answer here, as long as a warm answer itself; kept open, a save takes ~0.05 ms.
Every read and change of a conversation names its user, and
a conversation that is not theirs looks exactly like one that does not exist. Feedback copies
the question, answer, citations and collection, so it outlives the conversation it came from.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from rag.config import data_home

SCHEMA = """
CREATE TABLE IF NOT EXISTS conversations (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    collection TEXT NOT NULL,
    title TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS conversations_by_owner ON conversations (user, collection, updated);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    citations TEXT NOT NULL,  -- JSON: the answer's citations (rag.answer.Answer.to_json)
    display TEXT NOT NULL,    -- the message as the chat showed it (rag.chat's escaped markup)
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_conversation ON messages (conversation_id, id);
CREATE TABLE IF NOT EXISTS feedback (
    message_id INTEGER PRIMARY KEY,  -- no foreign key: feedback stays when its conversation goes
    user TEXT NOT NULL,
    collection TEXT NOT NULL,
    history TEXT NOT NULL,  -- JSON: the conversation's earlier questions, for follow-ups
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    citations TEXT NOT NULL,
    rating INTEGER NOT NULL,  -- +1 or -1
    comment TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL
);
"""
TITLE_CHARS = 80


def default_path() -> Path:
    return data_home() / "chat.sqlite3"


@dataclass(frozen=True)
class Conversation:
    id: int
    user: str
    collection: str
    title: str
    created: float
    updated: float


@dataclass(frozen=True)
class Message:
    id: int
    conversation_id: int
    question: str
    answer: str
    citations: list[dict]
    display: str
    rating: int | None = None
    comment: str = ""


@dataclass(frozen=True)
class Feedback:
    message_id: int
    user: str
    collection: str
    history: list[str]
    question: str
    answer: str
    citations: list[dict]
    rating: int
    comment: str
    created: float


class NotFound(LookupError):
    """A conversation or message that does not exist, or is not the user's."""


def title_for(question: str) -> str:
    """A conversation's first title: its first question, on one line, shortened."""
    line = " ".join(question.split())
    return line if len(line) <= TITLE_CHARS else line[: TITLE_CHARS - 1] + "…"


class History:
    def __init__(self, path: Path | None = None) -> None:
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")  # persistent: set once per file
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, in one transaction: committed on success, rolled back on error."""
        db = getattr(self._local, "db", None)
        if db is None:
            # timeout: a writer waits for another thread's write (milliseconds) instead of failing.
            db = sqlite3.connect(self.path, timeout=10)
            db.execute("PRAGMA foreign_keys=ON")
            # With WAL, NORMAL syncs at checkpoints, not at each commit: a crash of the app loses
            # nothing, a power cut at most the last moments.
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        with db:
            yield db

    # ------------------------------------------------------------------ conversations

    def create(self, user: str, collection: str, title: str) -> Conversation:
        now = time.time()
        with self._connect() as db:
            cursor = db.execute(
                "INSERT INTO conversations (user, collection, title, created, updated) VALUES (?, ?, ?, ?, ?)",
                (user, collection, title_for(title) or "New conversation", now, now),
            )
        return Conversation(cursor.lastrowid, user, collection, title_for(title), now, now)

    def conversations(self, user: str, collection: str) -> list[Conversation]:
        """The user's conversations over `collection`, the most recently used first."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, user, collection, title, created, updated FROM conversations "
                "WHERE user = ? AND collection = ? ORDER BY updated DESC, id DESC",
                (user, collection),
            ).fetchall()
        return [Conversation(*row) for row in rows]

    def get(self, conversation_id: int, user: str) -> Conversation:
        with self._connect() as db:
            row = db.execute(
                "SELECT id, user, collection, title, created, updated FROM conversations WHERE id = ? AND user = ?",
                (conversation_id, user),
            ).fetchone()
        if row is None:
            raise NotFound(f"no conversation {conversation_id}")
        return Conversation(*row)

    def rename(self, conversation_id: int, user: str, title: str) -> None:
        title = title_for(title)
        if not title:
            raise ValueError("a conversation's title cannot be empty")
        with self._connect() as db:
            changed = db.execute(
                "UPDATE conversations SET title = ? WHERE id = ? AND user = ?", (title, conversation_id, user)
            ).rowcount
        if not changed:
            raise NotFound(f"no conversation {conversation_id}")

    def delete(self, conversation_id: int, user: str) -> None:
        """Delete a conversation and its messages; feedback given on them is kept."""
        with self._connect() as db:
            changed = db.execute(
                "DELETE FROM conversations WHERE id = ? AND user = ?", (conversation_id, user)
            ).rowcount
        if not changed:
            raise NotFound(f"no conversation {conversation_id}")

    # ------------------------------------------------------------------ messages

    def add_message(
        self, conversation_id: int, user: str, question: str, answer: str, citations: list[dict], display: str
    ) -> int:
        """Append a question and its answer to the user's conversation; the message's id."""
        now = time.time()
        with self._connect() as db:
            owned = db.execute(
                "UPDATE conversations SET updated = ? WHERE id = ? AND user = ?", (now, conversation_id, user)
            ).rowcount
            if not owned:
                raise NotFound(f"no conversation {conversation_id}")
            cursor = db.execute(
                "INSERT INTO messages (conversation_id, question, answer, citations, display, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, question, answer, json.dumps(citations, ensure_ascii=False), display, now),
            )
        return cursor.lastrowid

    def messages(self, conversation_id: int, user: str) -> list[Message]:
        """The conversation's messages, oldest first, with the feedback the user gave them."""
        self.get(conversation_id, user)
        with self._connect() as db:
            rows = db.execute(
                "SELECT m.id, m.conversation_id, m.question, m.answer, m.citations, m.display, f.rating, f.comment "
                "FROM messages m LEFT JOIN feedback f ON f.message_id = m.id "
                "WHERE m.conversation_id = ? ORDER BY m.id",
                (conversation_id,),
            ).fetchall()
        return [Message(r[0], r[1], r[2], r[3], json.loads(r[4]), r[5], r[6], r[7] or "") for r in rows]

    # ------------------------------------------------------------------ feedback

    def rate(self, message_id: int, user: str, rating: int, comment: str | None = None) -> None:
        """Record 👍 (+1) or 👎 (-1) on one of the user's answers; a later rating replaces it.

        `comment` None keeps the comment already given.
        """
        if rating not in (1, -1):
            raise ValueError("a rating is +1 or -1")
        with self._connect() as db:
            row = db.execute(
                "SELECT m.conversation_id, m.question, m.answer, m.citations, c.collection "
                "FROM messages m JOIN conversations c ON c.id = m.conversation_id WHERE m.id = ? AND c.user = ?",
                (message_id, user),
            ).fetchone()
            if row is None:
                raise NotFound(f"no message {message_id}")
            conversation_id, question, answer, citations, collection = row
            history = [
                q
                for (q,) in db.execute(
                    "SELECT question FROM messages WHERE conversation_id = ? AND id < ? ORDER BY id",
                    (conversation_id, message_id),
                )
            ]
            db.execute(
                "INSERT INTO feedback (message_id, user, collection, history, question, answer, citations, "
                "rating, comment, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (message_id) DO UPDATE SET rating = excluded.rating, created = excluded.created, "
                "comment = CASE WHEN ? IS NULL THEN feedback.comment ELSE excluded.comment END",
                (
                    message_id,
                    user,
                    collection,
                    json.dumps(history, ensure_ascii=False),
                    question,
                    answer,
                    citations,
                    rating,
                    comment or "",
                    time.time(),
                    comment,
                ),
            )

    def unrate(self, message_id: int, user: str) -> None:
        """Withdraw the user's rating of an answer (a second click on the same thumb)."""
        with self._connect() as db:
            db.execute("DELETE FROM feedback WHERE message_id = ? AND user = ?", (message_id, user))

    def comment(self, message_id: int, user: str, comment: str) -> None:
        """Add or replace the comment on a rating the user already gave."""
        with self._connect() as db:
            changed = db.execute(
                "UPDATE feedback SET comment = ? WHERE message_id = ? AND user = ?", (comment.strip(), message_id, user)
            ).rowcount
        if not changed:
            raise NotFound(f"no rating on message {message_id}: give 👍 or 👎 first")

    def feedback(self, rating: int | None = None) -> list[Feedback]:
        """All feedback, oldest first; only `rating`'s when given (-1 for the 👎 answers)."""
        query = "SELECT message_id, user, collection, history, question, answer, citations, rating, comment, created"
        query += (
            " FROM feedback" + (" WHERE rating = ?" if rating is not None else "") + " ORDER BY created, message_id"
        )
        with self._connect() as db:
            rows = db.execute(query, () if rating is None else (rating,)).fetchall()
        return [
            Feedback(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], json.loads(r[6]), r[7], r[8], r[9]) for r in rows
        ]


def eval_case(feedback: Feedback) -> dict:
    """A 👎 answer as a row of the eval schema (eval/qa.jsonl, eval/multiturn.jsonl).

    `answers` is null: a person writes the expected answers in (or [] when the documents do not
    answer it, so the assistant should abstain), and `rag eval` refuses the row until then.
    `doc_ids` starts empty; the cited documents are under `feedback` to help fill it in.
    """
    from rag.answer import language_of

    row: dict = {
        "id": f"feedback-{feedback.message_id}",
        "question": feedback.question,
        "answers": None,
        "match": "any",
        "doc_ids": [],
        "tags": ["feedback", f"q-{language_of(feedback.question)}"],
    }
    if feedback.history:
        row["history"] = feedback.history
        row["tags"].append("multiturn")
    row["feedback"] = {
        "collection": feedback.collection,
        "given_answer": feedback.answer,
        "cited_doc_ids": list(dict.fromkeys(c.get("doc_id") for c in feedback.citations if c.get("doc_id"))),
        "comment": feedback.comment,
        "rating": feedback.rating,
    }
    return row
