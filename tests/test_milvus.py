"""The Milvus backend end to end (rag.milvus through rag.indexing), on Milvus Lite in tmp.

An index built on Milvus must answer as the FAISS one does, and refresh, deletion, generations
and a killed refresh must behave the same. The store contract itself is tests/test_store.py.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

import rag.indexing
from rag.assistant import Assistant
from rag.config import PROJECT_ROOT
from rag.indexing import RETIRED, IndexError_, current_generation, load_index, refresh_index

QUESTIONS = [
    "What carries tourists between the islands?",
    "What did the club observe through the telescope?",
    "浙江有多少项重大科技成果?",
    "How many cities does the G60 corridor link?",
    "Who paid for the telescope?",
    "What is the capital of Mongolia?",  # not in the corpus: both must abstain
]


def test_the_milvus_backend_without_a_uri_is_refused_before_any_work(settings, embedder):
    with pytest.raises(ValueError, match="needs --milvus-uri"):
        refresh_index(settings.with_(vector_backend="milvus"), embedder)
    assert embedder.embedded_passages == []


def test_the_default_backend_never_imports_pymilvus(settings, embedder):
    code = (
        "import sys; from rag.config import Settings; from rag.indexing import refresh_index, load_index\n"
        "import rag.cli, rag.assistant\n"
        "assert 'pymilvus' not in sys.modules and 'rag.milvus' not in sys.modules, 'imported'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_without_pymilvus_the_milvus_backend_says_what_to_install(settings, embedder, tmp_path, monkeypatch):
    from rag import milvus as milvus_module

    monkeypatch.setitem(sys.modules, "pymilvus", None)  # import pymilvus now raises ImportError
    milvus_module._client_for.cache_clear()
    with pytest.raises(RuntimeError, match=r"pip install 'rag\[milvus\]'"):
        refresh_index(settings.with_(vector_backend="milvus", milvus_uri=str(tmp_path / "m.db")), embedder)
    assert current_generation(settings.index_dir) is None  # nothing half-written


@pytest.fixture
def milvus(settings, tmp_path):
    """Settings for the Milvus backend on a Milvus Lite folder in tmp."""
    pytest.importorskip("pymilvus", reason="the Milvus backend is an extra: pip install 'rag[milvus]'")
    pytest.importorskip("milvus_lite")
    return settings.with_(vector_backend="milvus", milvus_uri=str(tmp_path / "milvus.db"))


def collections_of(settings) -> set[str]:
    from rag.milvus import client, collection_prefix

    prefix = collection_prefix(settings.index_dir)
    return {n for n in client(settings.milvus_uri).list_collections() if n.startswith(prefix)}


def live_collections(settings) -> set[str]:
    index = load_index(settings.index_dir)
    return {index.chunk_vectors.collection, index.sentence_vectors.collection}


@pytest.mark.integration
def test_an_index_on_milvus_answers_as_the_faiss_one_does(settings, milvus, embedder):
    refresh_index(settings, embedder)
    refresh_index(milvus.with_(index_dir=settings.index_dir.with_name("index-milvus")), embedder)
    on_faiss = Assistant(settings, embedder)
    on_milvus = Assistant(milvus.with_(index_dir=settings.index_dir.with_name("index-milvus")), embedder)
    assert on_milvus.index.chunk_vectors.kind == "flat"
    assert type(on_milvus.index.chunk_vectors).__name__ == "MilvusStore"
    answered = 0
    for question in QUESTIONS:
        want, got = on_faiss.ask(question), on_milvus.ask(question)
        assert (got.answer, got.abstained) == (want.answer, want.abstained), question
        assert [c.chunk_id for c in got.citations] == [c.chunk_id for c in want.citations], question
        answered += not got.abstained
    assert answered >= 2  # the comparison covers quoted answers, not only abstentions
    assert on_milvus.ask(QUESTIONS[-1]).abstained


@pytest.mark.integration
def test_refresh_on_milvus_removes_edited_and_deleted_vectors_and_old_collections(milvus, embedder):
    refresh_index(milvus, embedder)
    before = load_index(milvus.index_dir, embedder)
    first = live_collections(milvus)
    assert collections_of(milvus) == first
    old_beta = [
        int(c) for c in before.chunk_vectors.ids() if before.chunks[before.row_of_id[int(c)]].doc_id == "beta.md"
    ]
    (milvus.corpus_dir / "beta.md").unlink()
    alpha = milvus.corpus_dir / "alpha.txt"
    alpha.write_text(alpha.read_text("utf-8").replace("twice a year", "every spring"), encoding="utf-8")
    embedder.embedded_passages.clear()

    report = refresh_index(milvus, embedder)
    assert report.removed == ["beta.md"] and report.updated == ["alpha.txt"]
    after = load_index(milvus.index_dir, embedder)
    # Only the edited chunks were embedded; the rest were carried from the old collections.
    assert 0 < report.embedded_chunks < len(after.chunks)
    assert set(after.chunk_vectors.ids().tolist()) == set(after.row_of_id)
    assert set(after.sentence_vectors.ids().tolist()) == set(after.chunk_rows_of_sentence)
    assert not np.isin(old_beta, after.chunk_vectors.ids()).any()
    query = embedder.embed_queries(["quasar telescope"])
    _, found = after.chunk_vectors.search(query, 10)
    assert {after.chunks[after.row_of_id[int(i)]].doc_id for i in found[0] if i >= 0} <= {
        "alpha.txt",
        "chinese.txt",
        "mixed.txt",
    }
    # The old generation's folder and its collections are gone together.
    assert collections_of(milvus) == live_collections(milvus)
    assert not collections_of(milvus) & first
    assert [p.name for p in milvus.index_dir.glob("gen-*")] == [current_generation(milvus.index_dir).name]


@pytest.mark.integration
def test_a_replaced_generation_keeps_its_collections_for_replicas_until_its_grace_is_over(milvus, embedder):
    graced = milvus.with_(generation_grace_s=60)
    refresh_index(graced, embedder)
    first_gen, first = current_generation(milvus.index_dir), live_collections(milvus)
    serving = load_index(milvus.index_dir, embedder)  # as a replica still on the first generation
    (milvus.corpus_dir / "beta.md").unlink()
    refresh_index(graced, embedder)
    second = live_collections(milvus)
    assert first_gen.is_dir() and collections_of(milvus) == first | second  # not swept as orphans
    _, found = serving.chunk_vectors.search(embedder.embed_queries(["quasar telescope"]), 3)
    assert (found >= 0).any()  # the replica still searches its generation's collections
    (first_gen / RETIRED).write_text(f"{time.time() - 61}\n", encoding="ascii")  # replaced 61 s ago
    refresh_index(graced, embedder)
    assert not first_gen.exists() and collections_of(milvus) == second


@pytest.mark.integration
def test_a_refresh_killed_after_filling_milvus_leaves_the_old_generation_serving(milvus, embedder, monkeypatch):
    refresh_index(milvus, embedder)
    live = live_collections(milvus)
    gen = current_generation(milvus.index_dir)
    (milvus.corpus_dir / "beta.md").unlink()

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # after both collections were made and filled, before any file

    monkeypatch.setattr(rag.indexing, "_write_generation", killed)
    with pytest.raises(KeyboardInterrupt):
        refresh_index(milvus, embedder)
    assert current_generation(milvus.index_dir) == gen
    assert len(collections_of(milvus)) == 4  # the new generation's two, orphaned
    index = load_index(milvus.index_dir, embedder)
    assert "beta.md" in index.documents and len(index.chunk_vectors) == len(index.chunks)

    monkeypatch.undo()
    refresh_index(milvus, embedder)
    assert "beta.md" not in load_index(milvus.index_dir, embedder).documents
    assert collections_of(milvus) == live_collections(milvus)  # the orphans were swept
    assert not collections_of(milvus) & live


@pytest.mark.integration
def test_a_dropped_collection_is_reported_as_a_damaged_index(milvus, embedder):
    from rag.milvus import client

    refresh_index(milvus, embedder)
    client(milvus.milvus_uri).drop_collection(sorted(live_collections(milvus))[0])
    with pytest.raises(IndexError_, match="is missing from"):
        load_index(milvus.index_dir, embedder)


@pytest.mark.integration
def test_switching_a_faiss_index_to_milvus_carries_every_vector(settings, milvus, embedder):
    refresh_index(settings, embedder)
    embedder.embedded_passages.clear()
    refresh_index(milvus, embedder)
    assert embedder.embedded_passages == []  # nothing re-embedded: vectors carried by id
    index = load_index(milvus.index_dir, embedder)
    assert index.manifest["vector_backend"] == "milvus"
    [segment] = index.manifest["segments"]  # Milvus keeps one segment
    assert set(segment["checksums"]) >= {"chunks.milvus.json", "sentences.milvus.json"}
    assert not list(milvus.index_dir.glob("*/*.faiss"))
    assert set(index.chunk_vectors.ids().tolist()) == set(index.row_of_id)
