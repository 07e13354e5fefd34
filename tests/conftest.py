"""Shared fixtures: a tmp RAG_HOME for every test, a deterministic fake embedder, a small corpus.

The fake embedder hashes each search term into one of 64 dimensions with a hashed sign, plus a
little hash-seeded noise so no vector is zero: texts that share terms are close, and everything is
reproducible without a model. It records every text it is asked to embed, which is how the
incremental re-indexing tests count work.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from rag.config import ENV_VARS, Settings
from rag.documents import normalize
from rag.lexical import tokenize

# One token per CJK character, per run of letters/digits, per other visible character: close to
# what a subword tokenizer counts, and monotone in a text's prefixes as chunking's cutter expects.
_FAKE_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[A-Za-z0-9]+|\S")


def count_fake_tokens(texts: Sequence[str]) -> list[int]:
    return [len(_FAKE_TOKEN.findall(text)) for text in texts]


def _stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "little")


class FakeEmbedder:
    """A deterministic, L2-normalised keyword-hashing Embedder that remembers what it embedded."""

    def __init__(self, name: str = "fake-hash-64", dim: int = 64, noise: float = 0.01) -> None:
        self.name = name
        self.dim = dim
        self.noise = noise
        self.embedded_passages: list[str] = []
        self.embedded_queries: list[str] = []

    def _vector(self, text: str) -> np.ndarray:
        vector = np.random.default_rng(_stable_hash(text)).normal(0.0, self.noise, self.dim)
        for term in tokenize(normalize(text)):
            # Signed hashing: terms that collide in a dimension cancel as often as they add up.
            h = _stable_hash(term)
            vector[h % self.dim] += 1.0 if (h >> 32) & 1 else -1.0
        return vector / np.linalg.norm(vector)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([self._vector(t) for t in texts]).astype(np.float32)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded_passages.extend(texts)
        return self._embed(texts)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded_queries.extend(texts)
        return self._embed(texts)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return count_fake_tokens(texts)


def stop_process(process: subprocess.Popen, timeout: float = 15) -> None:
    """Stop a server a test started: terminate, then kill if it has not exited within `timeout` s."""
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the real model is converted: RAG_CACHE_DIR if the caller set one, else once per session."""
    preset = os.environ.get("RAG_CACHE_DIR")
    return Path(preset) if preset else tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def real_embedder(model_cache_dir: Path):
    """The bundled default model, converted into the session's cache and loaded once."""
    from rag.config import DEFAULT_EMBED_MODEL
    from rag.embeddings import load_embedder

    return load_embedder(DEFAULT_EMBED_MODEL, model_cache_dir)


@pytest.fixture(autouse=True)
def isolated_rag_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, model_cache_dir: Path) -> Path:
    """Keep every test away from the repo's index/ and the user's RAG_* settings."""
    for var in ENV_VARS.values():
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "rag-home"
    monkeypatch.setenv("RAG_HOME", str(home))
    monkeypatch.setenv("RAG_CACHE_DIR", str(model_cache_dir))
    return home


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def count_tokens():
    """The fake embedder's token counter, for chunking tests that need no embedder."""
    return count_fake_tokens


@pytest.fixture
def make_embedder():
    """FakeEmbedder with another name or dimension, as a differently configured model would be."""
    return FakeEmbedder


ALPHA = """River Delta Report

The river delta region grew quickly over the last decade.
Ports along the coast handled more cargo than ever before.
A rare airship called the zeppelin Aurora now carries tourists between the islands.
Local farmers grow rice and tea on the terraces above the river.
The regional council meets twice a year to plan new railways.
"""

BETA = """# Astronomy club notes

The club observed a distant quasar through the new telescope.
Members agreed to meet every Friday night when the sky is clear.
The telescope was paid for by a grant from the city library.
"""

CHINESE = """长三角科技成果展

6月6日上午，第二届长三角一体化发展高层论坛举行。
论坛集中展示了长三角地区近年来取得的585项重大科技成果。
其中上海132项，江苏127项，浙江165项，安徽161项。
"""

MIXED = """G60 Science and Technology Innovation Corridor / G60科创走廊

The G60 corridor links nine cities across three provinces.
G60科创走廊连接三省一市的九个城市。
Version 1.2 of the corridor plan adds 5G coverage for every industrial park by 2023.
"""

CORPUS = {
    "alpha.txt": ALPHA,
    "beta.md": BETA,
    "chinese.txt": CHINESE,
    "mixed.txt": MIXED,
}


@pytest.fixture
def corpus_texts() -> dict[str, str]:
    return dict(CORPUS)


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """Four small documents: two English, one Chinese, one mixed."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in CORPUS.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.fixture
def settings(tmp_path: Path, corpus_dir: Path) -> Settings:
    """Small chunks so the small documents still span several chunks each."""
    return Settings(
        corpus_dir=corpus_dir,
        index_dir=tmp_path / "index",
        cache_dir=tmp_path / "cache",
        chunk_tokens=32,
        chunk_overlap=8,
        top_k=3,
        # The fake embedder's cosines run far below e5's, and so does the judge's P(answerable): ~0.02-0.35
        # for the questions these documents answer, under 0.003 for those they do not.
        abstain_threshold=0.01,
        rerank_sentences=0,  # the sentence encoder is a model too: tests/test_rerank.py brings its own
        # A replaced generation is deleted at once, so a test sees one refresh's result alone;
        # tests/test_replicas.py keeps them for a grace period, as a deployment does by default.
        generation_grace_s=0,
    )
