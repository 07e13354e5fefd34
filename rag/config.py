"""Settings: one frozen dataclass, filled from flags, then environment variables, then defaults.

A setting a user may change is declared with `option(default, flag=, env=, help=)`: that one line
gives it its `rag` flag, its environment variable and its help text (rag.cli builds the parser from
`USER_SETTINGS`), so the three cannot drift apart. A plain `field` or default is internal.

Paths default to the bundled corpus and, in a repository checkout, its `index/`, so the quick start
needs no setup; an installed package keeps its index in the user cache instead (site-packages may be
read-only). `RAG_HOME` moves every default (index, model cache) at once, which is what tests redirect.
"""

from __future__ import annotations

import os
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

PASSAGE_PRECISIONS = ("auto", "fp32", "bf16", "int8")  # how the passage model runs (rag.embeddings)

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = PACKAGE_DIR.parent
# A checkout (or an editable install of one) has the repository around the package; a wheel has
# site-packages there, and the bundled data inside the package (pyproject's package-dir).
IN_CHECKOUT = (PROJECT_ROOT / "pyproject.toml").is_file() and (PROJECT_ROOT / "corpus").is_dir()
DEFAULT_EMBED_MODEL = "multilingual-e5-small"
# Ten minutes: a replica notices a new generation within seconds (NFS: up to a minute), loads
# 150k chunks in under a minute (1M: ~3 min, extrapolated; bench/RESULTS.md "Replicas"), and an
# answer in flight finishes within the LLM timeout.
GENERATION_GRACE_S = 600.0


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


def data_home() -> Path:
    """Where what users make lives (collections, conversations): RAG_HOME, else ~/.local/share/rag.

    Not the cache: deleting a cache must not delete a team's documents and feedback.
    """
    home = _home()
    if home:
        return home
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "rag"


def _default_cache_dir() -> Path:
    home = _home()
    return home / "cache" if home else _user_cache()


def option(
    default: Any = MISSING,
    *,
    factory: Any = MISSING,
    flag: str,
    env: str,
    help: str,
    choices: tuple[str, ...] | None = None,
) -> Any:
    """A Settings field a user may change, with its flag, environment variable and help text."""
    metadata = {"flag": flag, "env": env, "help": help, "choices": choices}
    return field(default=default, default_factory=factory, metadata=metadata)


@dataclass(frozen=True)
class Settings:
    corpus_dir: Path = option(
        factory=lambda: bundled("corpus"),
        flag="--corpus",
        env="RAG_CORPUS_DIR",
        help="folder of documents (text, Markdown, HTML, PDF, Office, EPUB, CSV, images), sub-folders "
        "included (default: the bundled corpus)",
    )
    index_dir: Path = option(
        factory=_default_index_dir,
        flag="--index-dir",
        env="RAG_INDEX_DIR",
        help="where the index lives (default: index/ in a checkout of the repository, else ~/.cache/rag/index)",
    )
    # "default" is the corpus and index above (--corpus, --index-dir); any other name is a folder
    # of its own with both inside (rag.collection).
    collection: str = option(
        "default",
        flag="--collection",
        env="RAG_COLLECTION",
        help="a named collection under RAG_HOME/collections, with its own corpus and index; "
        "'default' is --corpus/--index-dir",
    )
    embed_model: str = option(
        DEFAULT_EMBED_MODEL,
        flag="--model",
        env="RAG_EMBED_MODEL",
        help="sentence-transformers model name or path (default: the bundled multilingual-e5-small)",
    )
    cache_dir: Path = option(
        factory=_default_cache_dir,
        flag="--cache-dir",
        env="RAG_CACHE_DIR",
        help="where the bundled model is converted once and OCR text is kept (default: ~/.cache/rag)",
    )
    # Chunk size in tokens of the embedding model; calibrated on eval/qa.jsonl.
    chunk_tokens: int = 160
    chunk_overlap: int = 32
    # Files larger than this are skipped with a reason: memory while indexing one is ~28x its size
    # (bench/bigfile.py), so the default keeps a single file under ~2 GB.
    max_document_mb: float = option(
        64, flag="--max-document-mb", env="RAG_MAX_DOCUMENT_MB", help="larger files are skipped with a reason"
    )
    # Uploads from the web chat larger than this are refused before they are stored; below
    # max_document_mb, so an uploaded file is never one the indexer then skips for its size.
    max_upload_mb: float = option(
        32, flag="--max-upload-mb", env="RAG_MAX_UPLOAD_MB", help="larger uploads in the web chat are refused"
    )
    # Tesseract languages for scanned pages and images: those of these that are installed are used.
    ocr_languages: str = option(
        "eng+chi_sim+chi_tra",
        flag="--ocr-languages",
        env="RAG_OCR_LANGUAGES",
        help="Tesseract languages for scans and images, joined by + (those installed are used)",
    )
    # Passages shown to the answerer, and candidates each retriever contributes to fusion.
    top_k: int = option(5, flag="--top-k", env="RAG_TOP_K", help="passages per answer")
    candidates: int = 40
    rrf_k: int = 60
    # Vector index type: auto | flat | hnsw | ivfpq; auto is exact up to 200k vectors (rag.store).
    index_type: str = option(
        "auto",
        flag="--index-type",
        env="RAG_INDEX_TYPE",
        help="vector index: auto is exact (flat) up to 200k vectors, IVF-PQ with re-ranking above",
        choices=("auto", "flat", "hnsw", "ivfpq"),
    )
    # How a chunk gets its vector: "embedded" runs the model over the chunk; "pooled" takes the
    # length-weighted mean of its sentences' vectors, which are embedded anyway, so a build runs
    # the model over about half as much text, at a small cost in retrieval (bench/RESULTS.md).
    chunk_vectors: str = option(
        "embedded",
        flag="--chunk-vectors",
        env="RAG_CHUNK_VECTORS",
        help="embedded: the model reads each chunk; pooled: a chunk's vector is the mean of its sentences' "
        "(builds about twice as fast; changing it rebuilds the index)",
        choices=("embedded", "pooled"),
    )
    # bfloat16 matrix products run the passage model 2.6x as fast on a CPU that has them, with
    # vectors at cosine 0.99999 to float32's; int8 weights 1.9x, at 0.996 and one bundled
    # abstention fewer (bench/RESULTS.md, "Build: bfloat16 passages").
    passage_precision: str = option(
        "auto",
        flag="--passage-precision",
        env="RAG_PASSAGE_PRECISION",
        help="auto: bf16 where the CPU computes bfloat16 natively (AVX512-BF16 or AMX), else fp32; "
        "fp32: passages embedded in full precision; bf16: the passage model's matrix products in "
        "bfloat16 (float32 accumulation), vectors at cosine 0.99999 to fp32's; int8: its widening "
        "layers with int8 weights (changing to or from int8 rebuilds the index)",
        choices=PASSAGE_PRECISIONS,
    )
    # Where vectors live: the embedded FAISS files (default), or a Milvus server for an index that
    # outgrows one machine (rag.milvus; its token comes from RAG_MILVUS_TOKEN, never a flag).
    vector_backend: str = option(
        "faiss",
        flag="--vector-backend",
        env="RAG_VECTOR_BACKEND",
        help="where vectors are stored and searched: faiss (files in the index folder) or milvus "
        "(needs pip install 'rag[milvus]' and --milvus-uri)",
        choices=("faiss", "milvus"),
    )
    milvus_uri: str | None = option(
        None,
        flag="--milvus-uri",
        env="RAG_MILVUS_URI",
        help="Milvus for --vector-backend milvus: a Milvus Lite folder (./milvus.db) or a server, "
        "e.g. http://127.0.0.1:19530",
    )
    # Passages whose sentences the answer judge (rag.judge) reads, before the best `top_k` are shown.
    candidate_passages: int = 8
    # The answer judge's thresholds; None takes the values calibrated with it (rag/judge.json, refit
    # with `python -m rag.train_judge`).
    abstain_threshold: float | None = option(
        None,
        flag="--abstain-threshold",
        env="RAG_ABSTAIN_THRESHOLD",
        help="abstain when the answer judge's P(some sentence answers) is below this "
        "(default: the value calibrated with the judge, in rag/judge.json)",
    )
    quote_threshold: float | None = option(
        None,
        flag="--quote-threshold",
        env="RAG_QUOTE_THRESHOLD",
        help="quote a second or third sentence only when its P(it answers) reaches this "
        "(default: the value calibrated with the judge, in rag/judge.json)",
    )
    max_answer_sentences: int = 2
    # The best sentences the answer judge reads a second time with the cross-lingual Universal
    # Sentence Encoder (rag.judge, rag.rerank); 0 turns that off.
    rerank_sentences: int = option(
        8,
        flag="--rerank-sentences",
        env="RAG_RERANK_SENTENCES",
        help="best sentences the answer judge reads again with the cross-lingual USE model; 0 turns it off",
    )
    # An OpenAI-compatible chat server (see rag.llm); with no model set, answers are extractive.
    llm_base_url: str | None = option(
        None,
        flag="--llm-base-url",
        env="RAG_LLM_BASE_URL",
        help="OpenAI-compatible server for generated answers, e.g. http://127.0.0.1:11434/v1",
    )
    llm_model: str | None = option(None, flag="--llm-model", env="RAG_LLM_MODEL", help="model name on that server")
    llm_api_key: str | None = option(
        None, flag="--llm-api-key", env="RAG_LLM_API_KEY", help="API key, if the server wants one"
    )
    # Seconds to wait for the connection and for each read of the stream.
    llm_timeout: float = option(
        60.0, flag="--llm-timeout", env="RAG_LLM_TIMEOUT", help="seconds to wait for the LLM server"
    )
    # A server answers from the generation the index's CURRENT names, and looks for a newer one
    # (written by `rag index`, or by the server that writes it) at most this often (rag.live_index).
    reload_check_s: float = option(
        2.0,
        flag="--reload-check-seconds",
        env="RAG_RELOAD_CHECK_SECONDS",
        help="seconds between looks at the index for a generation another process wrote, which is then "
        "loaded in the background and swapped in; 0 looks before every question",
    )
    # A replaced generation stays on disk (and its Milvus collections in Milvus) this long, for
    # replicas still loading or serving it; the first refresh after that deletes it (rag.indexing).
    generation_grace_s: float = option(
        GENERATION_GRACE_S,
        flag="--generation-grace-seconds",
        env="RAG_GENERATION_GRACE_SECONDS",
        help="seconds a replaced index generation is kept for replicas still loading or serving it; "
        "0 deletes it as soon as a newer one is current",
    )
    # Passages sent to the LLM are dropped from the end, whole, until they fit this many tokens.
    llm_context_tokens: int = 1500
    llm_max_tokens: int = 400

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Flags (non-None overrides) win over environment variables, which win over defaults."""
        values: dict[str, object] = {}
        for setting in USER_SETTINGS:
            raw = os.environ.get(setting.env)
            if raw:
                values[setting.name] = setting.parse(raw, setting.env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name in ("corpus_dir", "index_dir", "cache_dir"):
            if name in values:
                values[name] = Path(values[name]).expanduser()
        return cls(**values)

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)


@dataclass(frozen=True)
class UserSetting:
    """One row of the settings table: a Settings field with its flag, variable and help text."""

    name: str
    flag: str
    env: str
    help: str
    type: str  # the annotation as written: "int", "float", "str", "Path", "str | None"
    choices: tuple[str, ...] | None = None
    default: object = None  # a plain default, shown in the help; None for computed ones

    @classmethod
    def of(cls, f: Field) -> UserSetting:
        m = f.metadata
        default = None if f.default is MISSING else f.default
        return cls(f.name, m["flag"], m["env"], m["help"], str(f.type), m["choices"], default)

    @property
    def help_text(self) -> str:
        default = "" if self.default is None else f" (default: {self.default})"
        return f"{self.help}{default} [{self.env}]"

    @property
    def kind(self) -> type:
        """What argparse converts a flag's text to; paths stay text until from_env expands `~`."""
        return {"int": int, "float": float}.get(self.type.removesuffix(" | None"), str)

    def parse(self, raw: str, source: str) -> object:
        try:
            value = self.kind(raw)
        except ValueError as exc:
            raise ValueError(f"{source}={raw!r} is not a valid {self.type}") from exc
        if self.choices and value not in self.choices:
            raise ValueError(f"{source}={raw!r}: choose one of {', '.join(self.choices)}")
        return value


# The table, in declaration order, and each setting's environment variable by field name.
USER_SETTINGS = tuple(UserSetting.of(f) for f in fields(Settings) if "env" in f.metadata)
ENV_VARS = {s.name: s.env for s in USER_SETTINGS}


# `rag serve --replica` (RAG_REPLICA=1): a flag of the server, not a Settings field (rag.web).
REPLICA_HELP = (
    "serve an index that another process writes (`rag index`, or one `rag serve` without --replica) on "
    "shared storage: never build, refresh or upload; wait for the index if it is not there yet, and pick "
    "up each new generation without a restart [RAG_REPLICA=1]"
)


def env_flag(name: str) -> bool:
    """An on/off environment variable: 1, true, yes or on (any case) is on."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")
