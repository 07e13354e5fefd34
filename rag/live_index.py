"""The index a long-running process answers from, kept on the generation the index's CURRENT names.

Another process may write a new generation at any time: `rag index`, the server that writes the
index (its Refresh button, an upload), or a build on other machines. `LiveIndex.get` hands out the
loaded generation and, at most every `check_s` seconds, reads CURRENT (a file of one line: a
generation's name and its manifest's checksum); when that changed, the new generation is loaded in a
background thread and swapped in whole, by one assignment. A question holds the Index it started
with, so it finishes on that generation; the next one gets the new. A load that fails (a damaged
or half-copied generation, one built with another model) is logged, the old generation keeps
answering, and the same CURRENT is tried again after `RETRY_FAILED_S`.

CURRENT is read rather than stat'ed: it is replaced by a rename, and on NFS opening a file
revalidates it (close-to-open consistency) while a stat may be answered from the attribute cache
for up to a minute. Reading its ~80 bytes costs tens of microseconds on a local disk.
Trade-off: while a new generation loads, both are in memory; and a process that asks no question
only follows CURRENT if `watch` was started (the web server does), which matters because the
writer deletes a replaced generation after its grace period (rag.indexing._remove_stale).
"""

from __future__ import annotations

import sys
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from rag.indexing import Index

# A CURRENT whose generation failed to load is tried again after this long, not on every check:
# a load re-reads (and checksums) every file of the generation.
RETRY_FAILED_S = 60.0
# The watcher's shortest interval, whatever `check_s` says (0 means "before every question").
MIN_WATCH_S = 1.0


def read_current(index_dir: Path) -> bytes | None:
    """CURRENT's bytes, which name the live generation; None when there is none (or it cannot be read)."""
    try:
        return (index_dir / "CURRENT").read_bytes()
    except OSError:
        return None


def _describe(pointer: bytes | None) -> str:
    text = (pointer or b"").decode("utf-8", "replace").split()
    return text[0] if text else "(none)"


class LiveIndex:
    """The loaded generation of one index folder, swapped for a newer one when CURRENT moves."""

    def __init__(self, index_dir: Path, load: Callable[[], Index], check_s: float = 2.0) -> None:
        self.index_dir = index_dir
        self._load = load  # loads the generation CURRENT names (rag.indexing.load_index)
        self.check_s = max(0.0, check_s)
        self._index: Index | None = None
        self._pointer: bytes | None = None  # CURRENT as read just before `_index` was loaded
        self._loading = threading.Lock()  # one load at a time
        self._next_check = 0.0
        self._failed: tuple[bytes | None, float] | None = None  # (CURRENT, when) of the last failed load
        self._watcher: threading.Thread | None = None

    @property
    def loaded(self) -> Index | None:
        """The generation being served, or None before the first load; never loads or checks."""
        return self._index

    def get(self) -> Index:
        """The generation to answer from: loaded on first use (raising if it cannot be), then checked
        for a newer one at most every `check_s` seconds, which is loaded in the background."""
        index = self._index
        if index is None:
            return self.load(only_if_missing=True)
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.check_s
            if self._wants(read_current(self.index_dir)) and not self._loading.locked():
                threading.Thread(target=self.follow, name="rag-index-reload", daemon=True).start()
        return index

    def load(self, only_if_missing: bool = False) -> Index:
        """Load the generation CURRENT names now and serve it; raise (rag.indexing.IndexError_) if it
        cannot be loaded, leaving what was served. For the first load, and after this process wrote one."""
        with self._loading:
            if only_if_missing and self._index is not None:
                return self._index
            pointer = read_current(self.index_dir)
            index = self._load()
            self._swap(pointer, index)
            return index

    def follow(self) -> bool:
        """Swap in the generation CURRENT names if it is not the one served; True when it was.

        Does nothing while another load runs. A failure is logged and the old generation kept.
        """
        if not self._loading.acquire(blocking=False):
            return False
        try:
            pointer = read_current(self.index_dir)
            if not self._wants(pointer):
                return False
            previous = self._index
            try:
                index = self._load()
            except Exception as exc:  # noqa: BLE001 - any failure keeps the old generation serving
                self._failed = (pointer, time.monotonic())
                still = f"still answering from {previous.path.name}" if previous else "no index loaded yet"
                print(
                    f"warning: index {self.index_dir}: cannot load generation {_describe(pointer)} "
                    f"({type(exc).__name__}: {exc}); {still}; trying again in {RETRY_FAILED_S:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
                return False
            self._swap(pointer, index)
            print(
                f"index {self.index_dir}: now answering from {index.path.name} "
                f"({len(index.documents)} documents, {len(index.chunks)} chunks)",
                file=sys.stderr,
                flush=True,
            )
            return True
        finally:
            self._loading.release()

    def watch(self) -> None:
        """Follow CURRENT from a daemon thread even when no question comes (once per LiveIndex).

        An idle replica must leave a replaced generation before the writer deletes it. The
        thread holds this object weakly and ends when it is gone.
        """
        if self._watcher is not None:
            return
        ref = weakref.ref(self)
        interval = max(self.check_s, MIN_WATCH_S)

        def run() -> None:
            while True:
                time.sleep(interval)
                live = ref()
                if live is None:
                    return
                if live._index is not None:  # the first load is the owner's, with its own messages
                    live.follow()
                del live

        self._watcher = threading.Thread(target=run, name="rag-index-watch", daemon=True)
        self._watcher.start()

    def _wants(self, pointer: bytes | None) -> bool:
        """Whether CURRENT reads `pointer` and names another generation than the one served."""
        if pointer is None or pointer == self._pointer:
            return False
        if self._failed is not None and self._failed[0] == pointer:
            return time.monotonic() - self._failed[1] >= RETRY_FAILED_S
        return True

    def _swap(self, pointer: bytes | None, index: Index) -> None:
        # Called with `_loading` held. One assignment each: a reader sees the old Index or the new.
        # `pointer` was read before loading: if CURRENT moved during the load, the next check loads again.
        self._index = index
        self._pointer = pointer
        self._failed = None
        self._next_check = time.monotonic() + self.check_s
