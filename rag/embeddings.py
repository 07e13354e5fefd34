"""Embeddings: one small interface, one engine (sentence-transformers), models loaded once.

Any model sentence-transformers can load (a hub name or a local path) works. The default name,
`multilingual-e5-small`, resolves to the bundled conversion (see rag.bundled_model), so the
default needs no network. Models that declare `query`/`document` prompts get them applied.
Trade-off: the model is cached per (name, cache dir) for the life of the process.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from rag.bundled_model import BUNDLED_MODEL_NAME, bundled_model_dir

_BUNDLED_ALIASES = {BUNDLED_MODEL_NAME, f"intfloat/{BUNDLED_MODEL_NAME}"}


@runtime_checkable
class Embedder(Protocol):
    """What the index and retrieval need from an embedding model."""

    name: str
    dim: int

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray: ...

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...


class EmbeddingModelError(RuntimeError):
    """The named embedding model could not be loaded."""


class SentenceTransformerEmbedder:
    """An Embedder backed by sentence-transformers; vectors are L2-normalised float32."""

    def __init__(self, name: str, cache_dir: Path, batch_size: int = 32) -> None:
        self.name = name
        self.batch_size = batch_size
        self._model = _load_sentence_transformer(name, str(cache_dir))
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        prompts = getattr(self._model, "prompts", {}) or {}
        self._query_prompt = "query" if "query" in prompts else None
        self._passage_prompt = next((p for p in ("document", "passage") if p in prompts), None)
        self.max_tokens = int(self._model.max_seq_length or 512)

    def _encode(self, texts: Sequence[str], prompt_name: str | None) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        vectors = self._model.encode(
            list(texts),
            prompt_name=prompt_name,
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self._passage_prompt)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self._query_prompt)

    def count_tokens(self, texts: Sequence[str], batch: int = 1024) -> list[int]:
        # In batches: the tokenizer returns every token id as a Python int (~40 bytes each), so
        # counting a large document's sentences in one call would hold ~40x its text at once.
        counts: list[int] = []
        for i in range(0, len(texts), batch):
            encoded = self._model.tokenizer(list(texts[i : i + batch]), add_special_tokens=False, truncation=False)
            counts.extend(len(ids) for ids in encoded["input_ids"])
        return counts


def resolve_model_path(name: str, cache_dir: Path) -> str:
    """The path or hub name sentence-transformers should load for `name`."""
    if name in _BUNDLED_ALIASES:
        return str(bundled_model_dir(cache_dir))
    return name


@functools.lru_cache(maxsize=4)
def _load_sentence_transformer(name: str, cache_dir: str):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:  # pragma: no cover - a hard dependency
        raise EmbeddingModelError("sentence-transformers is not installed: pip install sentence-transformers") from exc
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    path = resolve_model_path(name, Path(cache_dir))
    try:
        import transformers

        transformers.logging.set_verbosity_error()  # the load report is noise for users
        transformers.logging.disable_progress_bar()
        return SentenceTransformer(path, device="cpu")
    except Exception as exc:
        reason = str(exc).strip().rstrip(".")  # most loader messages end in a full stop already
        raise EmbeddingModelError(
            f"cannot load embedding model {name!r}: {reason}. Use a local sentence-transformers "
            f"directory, a model already in the Hugging Face cache, or the bundled default "
            f"{BUNDLED_MODEL_NAME!r}."
        ) from exc


@functools.lru_cache(maxsize=4)
def load_embedder(name: str, cache_dir: Path) -> SentenceTransformerEmbedder:
    """The embedder for `name`, loaded once per process."""
    return SentenceTransformerEmbedder(name, cache_dir)
