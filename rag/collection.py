"""Collections: named corpus folders, each with its own index, and who may use them.

`default` is the corpus and index of the settings (`--corpus`, `--index-dir`: the bundled corpus
unless moved); any other collection is `RAG_HOME/collections/NAME/` holding `corpus/`, `index/` and
`collection.json` (its metadata: who may use it). Trade-off: access is a list of user names in that
file, read on every check, not a permission system; the `default` collection is always shared.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from rag.config import Settings, data_home
from rag.documents import iter_document_paths

if TYPE_CHECKING:
    from rag.assistant import Assistant

DEFAULT = "default"
METADATA = "collection.json"
# Letters (any script), digits, '-' and '_', starting with a letter or digit: no separators, no
# dots (so no '..' or hidden folders), nothing a shell or a URL would need to quote.
_NAME = re.compile(r"[^\W_][\w-]{0,63}")


class CollectionError(ValueError):
    """A collection that cannot be used as asked: a bad name, a missing one, or no access."""


class NotReady(CollectionError):
    """The collection's index is still being built (first start); the message says how far it is."""


def validate_name(name: str) -> str:
    """`name` if it can be a collection's folder name, else a CollectionError saying why."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise CollectionError(
            f"{name!r} is not a valid collection name: use 1-64 letters, digits, '-' or '_', "
            "starting with a letter or digit (no '/', '.', or spaces)"
        )
    return name


def root() -> Path:
    """The folder that holds every named collection."""
    return data_home() / "collections"


@dataclass(frozen=True)
class Collection:
    name: str
    folder: Path | None  # None for `default`, whose folders are the settings'
    users: tuple[str, ...] | None = None  # None: shared with everyone

    def allows(self, user: str | None) -> bool:
        """Whether `user` may list, read and ask this collection; None is the open app (no login)."""
        return user is None or self.users is None or user in self.users

    def settings(self, base: Settings) -> Settings:
        """`base` answering over this collection's corpus and index."""
        if self.folder is None:
            return base.with_(collection=DEFAULT)
        return base.with_(collection=self.name, corpus_dir=self.folder / "corpus", index_dir=self.folder / "index")

    def corpus_dir(self, base: Settings) -> Path:
        return self.settings(base).corpus_dir


def _read_metadata(folder: Path) -> dict:
    try:
        data = json.loads((folder / METADATA).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise CollectionError(f"{folder / METADATA} is not valid JSON ({exc}): fix or delete it") from exc
    return data if isinstance(data, dict) else {}


def _write_metadata(folder: Path, data: dict) -> None:
    tmp = folder / (METADATA + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    tmp.replace(folder / METADATA)  # whole or not at all: an access list must never be half-written


def get(name: str) -> Collection:
    """The collection called `name`; a CollectionError when the name is bad or it does not exist."""
    validate_name(name)
    if name == DEFAULT:
        return Collection(DEFAULT, None)
    folder = root() / name
    if not folder.is_dir():
        raise CollectionError(f"no collection named {name!r}: create it with `rag collection create {name}`")
    users = _read_metadata(folder).get("users")
    return Collection(name, folder, None if users is None else tuple(users))


def list_collections() -> list[Collection]:
    """`default` first, then every named collection, by name."""
    found = [Collection(DEFAULT, None)]
    if root().is_dir():
        for folder in sorted(root().iterdir()):
            if folder.is_dir() and _NAME.fullmatch(folder.name) and folder.name != DEFAULT:
                found.append(get(folder.name))
    return found


def visible_to(user: str | None) -> list[Collection]:
    """The collections `user` may see, `default` first."""
    return [c for c in list_collections() if c.allows(user)]


def create(name: str, users: list[str] | None = None) -> Collection:
    """A new, empty collection; `users` restricts it to those names (None: shared)."""
    validate_name(name)
    if name == DEFAULT:
        raise CollectionError("'default' is the bundled (or --corpus) collection and always exists")
    folder = root() / name
    if folder.exists():
        raise CollectionError(f"a collection named {name!r} already exists ({folder})")
    (folder / "corpus").mkdir(parents=True)
    _write_metadata(folder, {"name": name, "users": sorted(set(users)) if users is not None else None})
    return get(name)


def set_access(name: str, users: list[str] | None) -> Collection:
    """Restrict `name` to `users`, or share it with everyone (None)."""
    collection = get(name)
    if collection.folder is None:
        raise CollectionError("the 'default' collection is always shared; create a named one to restrict access")
    data = _read_metadata(collection.folder)
    data.update(name=name, users=sorted(set(users)) if users is not None else None)
    _write_metadata(collection.folder, data)
    return get(name)


def delete(name: str) -> Path:
    """Delete a named collection's folder: its documents, index and metadata."""
    collection = get(name)
    if collection.folder is None:
        raise CollectionError("the 'default' collection cannot be deleted (it is --corpus/--index-dir)")
    shutil.rmtree(collection.folder)
    return collection.folder


def document_count(collection: Collection, base: Settings) -> int:
    corpus = collection.corpus_dir(base)
    return sum(1 for _ in iter_document_paths(corpus)) if corpus.is_dir() else 0


class Library:
    """One Assistant per collection, made on first use and kept; they share one embedder.

    For the web chat, where each browser may be on another collection. A user without access
    gets a CollectionError before anything is loaded. A `replica` library never builds or
    refreshes an index (its Assistants are read-only): a collection whose index does not exist
    yet is NotReady. With `watch`, each Assistant follows its index from a background thread.
    """

    def __init__(
        self, base: Settings, first: Assistant | None = None, replica: bool = False, watch: bool = False
    ) -> None:
        self.base = base
        self.replica = replica
        self.watch = watch
        self._assistants: dict[str, Assistant] = {}
        if first is not None:
            self._assistants[first.settings.collection] = first
        self._lock = threading.Lock()
        self._building: dict[str, tuple[str, float]] = {}  # name -> (stage, when it started)
        self._failed: dict[str, str] = {}

    def prepare(self, name: str, build: Callable[[Callable[[str], None]], Assistant]) -> threading.Thread:
        """Build `name`'s Assistant in a thread: `build(report)` calls `report(stage)` as it goes.

        Until it is done, asking the collection raises NotReady naming the stage, so a server can
        serve its page at once on first start and take questions when the index is ready.
        """
        started = time.monotonic()
        self._building[name] = ("starting", started)

        def report(stage: str) -> None:
            self._building[name] = (stage, started)

        def run() -> None:
            try:
                assistant = build(report)
            except Exception as exc:  # noqa: BLE001 - shown in the page; the next question tries again
                self._failed[name] = f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc)
            else:
                with self._lock:
                    self._assistants[name] = assistant
                if self.watch:
                    assistant.watch_index()
            finally:
                self._building.pop(name, None)

        thread = threading.Thread(target=run, name=f"prepare-{name}", daemon=True)
        thread.start()
        return thread

    def status(self, name: str) -> str | None:
        """What keeps `name` from answering yet ("building the index (12 s)"), or None when it can."""
        # Another collection being built holds this one too: they share its embedding model.
        building = self._building.get(name) or next(iter(self._building.values()), None)
        if building is not None:
            stage, started = building
            return f"{stage} ({time.monotonic() - started:.0f} s)"
        return None

    def failure(self, name: str) -> str | None:
        """Why preparing `name` failed, if it did; the next question tries again."""
        return self._failed.get(name)

    def collection(self, name: str, user: str | None) -> Collection:
        collection = get(name)
        if not collection.allows(user):
            # The same words as a missing one: a user learns nothing of collections they may not use.
            raise CollectionError(f"no collection named {name!r}: create it with `rag collection create {name}`")
        return collection

    def assistant(self, name: str, user: str | None) -> Assistant:
        """The Assistant answering over collection `name`, its index built or refreshed on first use."""
        collection = self.collection(name, user)
        status = self.status(name)
        if status is not None:
            if self.replica:
                raise NotReady(
                    f"This server is waiting for the index: {status}. Questions are answered when it is ready. · "
                    "正在等待索引，完成后即可提问。"
                )
            raise NotReady(
                f"The index is being built: {status}. Questions are answered when it is ready. · "
                "正在建立索引，完成后即可提问。"
            )
        self._failed.pop(name, None)
        with self._lock:  # one load per collection, even when two browsers open it at once
            assistant = self._assistants.get(name)
            if assistant is None:
                from rag.assistant import Assistant

                shared = next(iter(self._assistants.values()), None)
                embedder = shared.embedder if shared else None
                assistant = Assistant(collection.settings(self.base), embedder, read_only=self.replica)
                if not self.replica:
                    assistant.ensure_index()  # a missing corpus folder raises here, and is tried again next time
                self._assistants[name] = assistant
                if self.watch:
                    assistant.watch_index()
        if self.replica:
            from rag.indexing import IndexMissingError

            try:
                assistant.index  # noqa: B018 - loads it on first use, or says it is not there yet
            except IndexMissingError as exc:
                raise NotReady(
                    f"The collection {name!r} has no index yet: this server is a replica, and answers once "
                    "`rag index` or the writing server has built it. · 索引尚未建立。"
                ) from exc
        return assistant
