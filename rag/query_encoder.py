"""Questions through the default model without torch: its forward pass in numpy, its tokenizer trimmed.

sentence-transformers embeds the passages (rag.embeddings); importing it with torch and loading
the model took 8-9 s of a 12 s `rag ask`, for one question. This runs the same BERT layers over
the same converted files (rag.bundled_model) in numpy, with vectors within 2e-7 of torch's.
Trade-off: the model's forward pass exists twice (torch and numpy), kept equal by a test
(tests/test_bundled_model.py), and one text at a time, without batching.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

# Characters of the trimmed vocabulary: ASCII, general punctuation, CJK symbols and ideographs,
# half/full-width forms, and sentencepiece's word marker.
_COMMON_RANGES = ((0x20, 0x7E), (0x2000, 0x206F), (0x3000, 0x303F), (0x3400, 0x9FFF), (0xFF00, 0xFFEF))
_TRIMMED = "tokenizer-common-v1"  # file names; bump the version when the trimming changes


# erf(x) for float32 as a rational function of x (Eigen's single-precision erf, the one XLA and
# TensorFlow use), |x| clamped to 4 where erf is +-1 in float32: odd numerator, even denominator.
_ERF_NUMERATOR = tuple(
    np.float32(c)
    for c in (
        -2.72614225801306e-10,
        2.77068142495902e-08,
        -2.10102402082508e-06,
        -5.69250639462346e-05,
        -7.34990630326855e-04,
        -2.95459980854025e-03,
        -1.60960333262415e-02,
    )
)
_ERF_DENOMINATOR = tuple(
    np.float32(c)
    for c in (
        -1.45660718464996e-05,
        -2.13374055278905e-04,
        -1.68282697438203e-03,
        -7.37332916720468e-03,
        -1.42647390514189e-02,
    )
)


def erf(x: np.ndarray) -> np.ndarray:
    """erf of a float32 array, within 4e-7 of the exact value.

    Why not scipy.special.erf: it evaluates each element in float64, 0.30 ms for one question's
    20 x 1,536 GELU inputs against 0.044 ms for this; over 12 layers that was ~3 ms of a 21 ms
    question (bench/RESULTS.md, "The e5 query encoder's GELU").
    """
    x = np.clip(x, -4.0, 4.0, dtype=np.float32)
    x2 = x * x
    numerator = x2 * _ERF_NUMERATOR[0]
    numerator += _ERF_NUMERATOR[1]
    for c in _ERF_NUMERATOR[2:]:
        numerator *= x2
        numerator += c
    numerator *= x
    denominator = x2 * _ERF_DENOMINATOR[0]
    denominator += _ERF_DENOMINATOR[1]
    for c in _ERF_DENOMINATOR[2:]:
        denominator *= x2
        denominator += c
    numerator /= denominator
    return numerator


def _is_common(char: str) -> bool:
    return char == "\u2581" or any(lo <= ord(char) <= hi for lo, hi in _COMMON_RANGES)


class QuestionTokenizer:
    """text -> token ids exactly as tokenizer.json gives them, specials added, truncated to `max_length`.

    Why trimmed: `tokenizers` builds tokenizer.json's 250,002-piece vocabulary in 0.8-1.2 s on a
    busy machine; the 100,323 pieces written only with the characters above (English, Chinese,
    numbers, punctuation) load in 0.17-0.31 s. The unigram tokenizer only considers pieces that
    occur in the normalised text, so for a text made of those characters the trimmed vocabulary
    offers the same pieces with the same scores and gives the same segmentation; ids are mapped
    back. Any other text (accents, other scripts, a special token written out) goes to the full
    tokenizer, loaded then. Checked on the corpus, the eval questions and 2,000 random strings
    (tests/test_bundled_model.py).
    """

    def __init__(self, model_dir: Path, max_length: int) -> None:
        from tokenizers import Tokenizer

        self._model_dir = model_dir
        self._max_length = max_length
        self._full = None
        path, self._ids, self._specials = _trimmed_tokenizer(model_dir)
        self._common = Tokenizer.from_file(str(path))
        self._common.no_padding()
        self._common.enable_truncation(max_length=max_length)

    def _full_tokenizer(self):
        if self._full is None:
            from tokenizers import Tokenizer

            self._full = Tokenizer.from_file(str(self._model_dir / "tokenizer.json"))
            self._full.no_padding()
            self._full.enable_truncation(max_length=self._max_length)
        return self._full

    def __call__(self, text: str) -> list[int]:
        normalized = self._common.normalizer.normalize_str(text)
        if all(c == " " or _is_common(c) for c in normalized) and not any(s in text for s in self._specials):
            return self._ids[self._common.encode(text).ids].tolist()
        return self._full_tokenizer().encode(text).ids


def _trimmed_tokenizer(model_dir: Path) -> tuple[Path, np.ndarray, list[str]]:
    """The trimmed tokenizer file, the full vocabulary's id of each of its pieces, and the special tokens.

    Written once, under unique temporary names and renamed, the tokenizer last: it being there
    means the ids are too. Two processes writing them at once write the same bytes.
    """
    path, table_path = model_dir / f"{_TRIMMED}.json", model_dir / f"{_TRIMMED}.npz"
    if not (path.is_file() and table_path.is_file()):
        full = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
        vocab, added = full["model"]["vocab"], full["added_tokens"]
        specials = {t["id"] for t in added}
        # The first four (<s> <pad> </s> <unk>) keep their ids, which the post-processor names.
        kept = [i for i, (piece, _) in enumerate(vocab) if i < 4 or (i not in specials and all(map(_is_common, piece)))]
        trimmed = {**full, "model": {**full["model"], "vocab": [vocab[i] for i in kept]}}
        trimmed["added_tokens"] = [t for t in added if t["id"] < 4]
        table = {"ids": np.asarray(kept, dtype=np.int64), "specials": np.asarray([t["content"] for t in added])}
        _write_atomically(table_path, lambda fh: np.savez(fh, **table))
        _write_atomically(path, lambda fh: fh.write(json.dumps(trimmed, ensure_ascii=False).encode()))
    with np.load(table_path, allow_pickle=False) as table:
        return path, table["ids"], [str(s) for s in table["specials"]]


def _write_atomically(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class BertQueryEncoder:
    """The converted model's forward pass in numpy, for one question at a time: no torch.

    The same computation as sentence-transformers over the same files (tokenizer.json through
    the `tokenizers` library, BERT layers over the fp32 weights of model.safetensors, mean
    pooling, L2 norm), so vectors agree at cosine ~1.0 (tests/test_bundled_model.py). The
    384 MB word-embedding table is read a row per token from the memory-mapped file.
    Trade-off: no batching or padding, which questions, embedded one by one, do not need.
    """

    def __init__(self, model_dir: Path) -> None:
        from safetensors import safe_open

        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
        st_config = json.loads((model_dir / "sentence_bert_config.json").read_text(encoding="utf-8"))
        self._heads = int(config["num_attention_heads"])
        self._layers = int(config["num_hidden_layers"])
        self._eps = float(config["layer_norm_eps"])
        self._tokenize = QuestionTokenizer(model_dir, int(st_config.get("max_seq_length", 512)))
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
        ids = self._tokenize(text)
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
            hidden = 0.5 * hidden * (1.0 + erf(hidden / np.float32(np.sqrt(2.0))))  # BERT's erf GELU, not tanh's
            x = self._layer_norm(x + self._linear(hidden, p + "output.dense"), p + "output.LayerNorm")
        pooled = x.mean(0)
        return (pooled / max(float(np.linalg.norm(pooled)), 1e-12)).astype(np.float32)
