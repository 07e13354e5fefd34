"""Users for the web chat's optional login: a JSON file of salted `hashlib.scrypt` hashes.

`RAG_AUTH_FILE` names the file; `rag user add|list|remove` edit it. A password is never stored,
only scrypt(password, 16 random bytes of salt) with its cost parameters, so they can be raised
later without invalidating old entries. Trade-off: a flat file suits a team of tens, read on
each login; there are no roles beyond the per-collection user lists (rag.collection).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
from pathlib import Path

# scrypt's cost: ~50 ms and 16 MB per check on a laptop core, which makes guessing slow while a
# login stays instant. n=2**14, r=8 is the interactive-login setting of the scrypt paper.
SCRYPT = {"n": 2**14, "r": 8, "p": 1}
_USER = re.compile(r"[^\W_][\w.@-]{0,63}")
MIN_PASSWORD_CHARS = 8


class AuthError(ValueError):
    """A users file or user name that cannot be used as given."""


def auth_file() -> Path | None:
    """The users file named by RAG_AUTH_FILE, or None: the app runs without login."""
    value = os.environ.get("RAG_AUTH_FILE")
    return Path(value).expanduser() if value else None


def validate_user(name: str) -> str:
    if not _USER.fullmatch(name or ""):
        raise AuthError(f"{name!r} is not a valid user name: use 1-64 letters, digits, '.', '@', '-' or '_'")
    return name


def _hash(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)


def load_users(path: Path) -> dict[str, dict]:
    """User name -> its hash entry. A missing file is an error: login was asked for."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(
            f"the users file {path} does not exist: add a user with `rag user add NAME` (RAG_AUTH_FILE={path})"
        ) from exc
    except ValueError as exc:
        raise AuthError(f"the users file {path} is not valid JSON ({exc})") from exc
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise AuthError(f"the users file {path} has no 'users' table")
    return users


def _save(path: Path, users: dict[str, dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    # Readable by its owner only, from the moment it exists: hashes are still worth guessing at.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"users": users}, fh, ensure_ascii=False, indent=1, sort_keys=True)
        fh.write("\n")
    tmp.replace(path)  # a crash leaves the old file whole, never half a file


def add_user(path: Path, name: str, password: str) -> bool:
    """Add `name`, or set a new password if it exists; True when the user is new."""
    validate_user(name)
    if len(password) < MIN_PASSWORD_CHARS:
        raise AuthError(f"the password is too short: use at least {MIN_PASSWORD_CHARS} characters")
    users = load_users(path) if Path(path).exists() else {}
    salt = secrets.token_bytes(16)
    new = name not in users
    users[name] = {"salt": salt.hex(), "hash": _hash(password, salt, **SCRYPT).hex(), **SCRYPT}
    _save(Path(path), users)
    return new


def remove_user(path: Path, name: str) -> None:
    users = load_users(path)
    if name not in users:
        raise AuthError(f"no user named {name!r} in {path}")
    del users[name]
    _save(Path(path), users)


def list_users(path: Path) -> list[str]:
    return sorted(load_users(path))


# What an unknown name is checked against, so it costs as long as a wrong password: the
# time a login takes does not tell which names exist.
_DUMMY = {"salt": "00" * 16, "hash": "00" * 32, **SCRYPT}


def check_password(path: Path, name: str, password: str) -> bool:
    """True when `password` is `name`'s; False for a wrong password or an unknown user."""
    entry = load_users(path).get(name)
    known = isinstance(entry, dict)
    entry = entry if known else _DUMMY
    try:
        digest = _hash(password, bytes.fromhex(entry["salt"]), int(entry["n"]), int(entry["r"]), int(entry["p"]))
        expected = bytes.fromhex(entry["hash"])
    except (KeyError, ValueError, TypeError):
        return False  # a damaged entry lets nobody in
    return hmac.compare_digest(digest, expected) and known


def login_check(path: Path):
    """The `auth=` callable for Gradio's launch: (user name, password) -> allowed."""

    def check(name: str, password: str) -> bool:
        try:
            return check_password(path, name, password)
        except (OSError, AuthError):
            return False  # the file went missing or bad while serving: nobody gets in

    return check
