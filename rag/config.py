"""Settings: one frozen dataclass, filled from flags, then environment variables, then defaults.

Paths default to the bundled corpus and, in a repository checkout, its `index/`, so the quick start
needs no setup; an installed package keeps its index in the user cache instead (site-packages may be
read-only). `RAG_HOME` moves every default (index, model cache) at once, which is what tests redirect.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
# A checkout (or an editable install of one) has the repository around the package; a wheel has
# site-packages there, and the bundled data inside the package (pyproject's package-dir).
IN_CHECKOUT = (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "corpus").is_dir()
DEFAULT_EMBED_MODEL = "multilingual-e5-small"

# Environment variable for each setting a user may want to change without a flag.
ENV_VARS = {
    "corpus_dir": "RAG_CORPUS_DIR",
    "index_dir": "RAG_INDEX_DIR",
    "embed_model": "RAG_EMBED_MODEL",
    "cache_dir": "RAG_CACHE_DIR",
    "top_k": "RAG_TOP_K",
    "index_type": "RAG_INDEX_TYPE",
    "abstain_threshold": "RAG_ABSTAIN_THRESHOLD",
    "llm_base_url": "RAG_LLM_BASE_URL",
    "llm_model": "RAG_LLM_MODEL",
    "llm_api_key": "RAG_LLM_API_KEY",
    "llm_timeout": "RAG_LLM_TIMEOUT",
    "max_document_mb": "RAG_MAX_DOCUMENT_MB",
    "rerank_sentences": "RAG_RERANK_SENTENCES",
}


def _home() -> Path | None:
    home = os.environ.get("RAG_HOME")
    return Path(home) if home else None


def bundled(name: str) -> Path:
    """The bundled `corpus` or `eval` folder: the repository's own, else the installed package's copy."""
    return PROJECT_ROOT / name if IN_CHECKOUT else PACKAGE_DIR / "data" / name


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rag"


def _default_index_dir() -> Path:
    home = _home()
    if home:
        return home / "index"
    return PROJECT_ROOT / "index" if IN_CHECKOUT else _user_cache() / "index"


def _default_cache_dir() -> Path:
    home = _home()
    return home / "cache" if home else _user_cache()


@dataclass(frozen=True)
class Settings:
    corpus_dir: Path = field(default_factory=lambda: bundled("corpus"))
    index_dir: Path = field(default_factory=_default_index_dir)
    embed_model: str = DEFAULT_EMBED_MODEL
    cache_dir: Path = field(default_factory=_default_cache_dir)
    # Chunk size in tokens of the embedding model; calibrated on eval/qa.jsonl.
    chunk_tokens: int = 160
    chunk_overlap: int = 32
    # Files larger than this are skipped with a reason: memory while indexing one is ~28x its size
    # (bench/bigfile.py), so the default keeps a single file under ~2 GB.
    max_document_mb: float = 64
    # Passages shown to the answerer, and candidates each retriever contributes to fusion.
    top_k: int = 5
    candidates: int = 40
    rrf_k: int = 60
    # Vector index type: auto | flat | hnsw | ivfpq; auto is exact up to 200k vectors (rag.store).
    index_type: str = "auto"
    # Minimum evidence score (rag.answer.evidence_score: the best sentence's score less the share of
    # the question's words the documents never mention) below which the assistant abstains;
    # calibrated on the non-heldout eval questions (`rag eval --calibrate`).
    abstain_threshold: float = 0.501
    max_answer_sentences: int = 2
    # The best sentences that the cross-lingual judge (rag.rerank) reorders; 0 turns it off. From 3
    # to 100 answer the same eval questions (2 do not); 5 costs ~3 ms a question on sentences it
    # has seen, ~17 ms on new ones (bench/RESULTS.md).
    rerank_sentences: int = 5
    # An OpenAI-compatible chat server (see rag.llm); with no model set, answers are extractive.
    llm_base_url: str | None = None
    llm_model: str | None = None
    llm_api_key: str | None = None
    # Seconds to wait for the connection and for each read of the stream.
    llm_timeout: float = 60.0
    # Passages sent to the LLM are dropped from the end, whole, until they fit this many tokens.
    llm_context_tokens: int = 1500
    llm_max_tokens: int = 400

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Flags (non-None overrides) win over environment variables, which win over defaults."""
        values: dict[str, object] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in ENV_VARS.items():
            raw = os.environ.get(var)
            if raw:
                values[name] = _coerce(types[name], raw, var)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("corpus_dir", "index_dir", "cache_dir"):
            if name in values:
                values[name] = Path(values[name]).expanduser()
        return cls(**values)

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)


def _coerce(type_name: object, raw: str, var: str) -> object:
    kind = str(type_name)
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError as exc:
        raise ValueError(f"{var}={raw!r} is not a valid {kind}") from exc
    return raw
