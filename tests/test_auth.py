"""The web chat's users file: salted scrypt hashes, checks, and the `rag user` commands."""

from __future__ import annotations

import io
import json
import stat
from pathlib import Path

import pytest

from rag import auth
from rag.cli import main


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch: pytest.MonkeyPatch):
    """The real parameters cost ~50 ms a hash on purpose; the logic is the same at n=2**10."""
    monkeypatch.setattr(auth, "SCRYPT", {"n": 2**10, "r": 8, "p": 1})
    monkeypatch.setattr(auth, "_DUMMY", {"salt": "00" * 16, "hash": "00" * 32, "n": 2**10, "r": 8, "p": 1})


def test_a_password_is_stored_salted_and_hashed_never_as_text(tmp_path: Path):
    path = tmp_path / "users.json"
    assert auth.add_user(path, "alice", "correct horse")
    assert auth.add_user(path, "bob", "correct horse")
    text = path.read_text(encoding="utf-8")
    assert "correct horse" not in text
    users = json.loads(text)["users"]
    assert users["alice"]["salt"] != users["bob"]["salt"]
    assert users["alice"]["hash"] != users["bob"]["hash"]  # same password, different salts
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_right_password_passes_and_anything_else_fails(tmp_path: Path):
    path = tmp_path / "users.json"
    auth.add_user(path, "alice", "correct horse")
    assert auth.check_password(path, "alice", "correct horse")
    assert not auth.check_password(path, "alice", "correct horsE")
    assert not auth.check_password(path, "alice", "")
    assert not auth.check_password(path, "mallory", "correct horse")
    assert not auth.add_user(path, "alice", "battery staple")  # a new password replaces the old
    assert not auth.check_password(path, "alice", "correct horse")
    assert auth.check_password(path, "alice", "battery staple")


def test_a_missing_or_damaged_file_lets_nobody_in_with_a_message_naming_it(tmp_path: Path):
    missing = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match="nope.json does not exist: add a user"):
        auth.check_password(missing, "alice", "correct horse")
    assert auth.login_check(missing)("alice", "correct horse") is False
    damaged = tmp_path / "damaged.json"
    damaged.write_text("{not json", encoding="utf-8")
    assert auth.login_check(damaged)("alice", "correct horse") is False
    bad_entry = tmp_path / "bad-entry.json"
    bad_entry.write_text(json.dumps({"users": {"alice": {"salt": "zz"}}}), encoding="utf-8")
    assert not auth.check_password(bad_entry, "alice", "anything")


@pytest.mark.parametrize("name", ["", "a/b", "../x", "with space", "_x", "x" * 65])
def test_user_names_are_validated(tmp_path: Path, name: str):
    with pytest.raises(auth.AuthError, match="not a valid user name"):
        auth.add_user(tmp_path / "users.json", name, "correct horse")


def test_a_short_password_is_refused(tmp_path: Path):
    with pytest.raises(auth.AuthError, match="too short"):
        auth.add_user(tmp_path / "users.json", "alice", "short")
    assert not (tmp_path / "users.json").exists()


def test_rag_user_add_list_remove(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    path = tmp_path / "users.json"
    monkeypatch.setenv("RAG_AUTH_FILE", str(path))
    monkeypatch.setattr("sys.stdin", io.StringIO("correct horse\n"))  # a script pipes the password in
    assert main(["user", "add", "alice"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("battery staple\n"))
    assert main(["user", "--auth-file", str(path), "add", "bob"]) == 0
    assert auth.check_password(path, "alice", "correct horse")
    capsys.readouterr()
    assert main(["user", "list"]) == 0
    assert capsys.readouterr().out.split() == ["alice", "bob"]
    assert main(["user", "remove", "bob"]) == 0
    assert main(["user", "remove", "bob"]) == 1
    assert "no user named 'bob'" in capsys.readouterr().err
    assert auth.list_users(path) == ["alice"]


def test_rag_user_without_a_users_file_says_how_to_name_one(monkeypatch: pytest.MonkeyPatch, capsys):
    monkeypatch.delenv("RAG_AUTH_FILE", raising=False)
    assert main(["user", "list"]) == 1
    assert "set RAG_AUTH_FILE or give --auth-file" in capsys.readouterr().err
