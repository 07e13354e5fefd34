"""Contract tests for the vector stores: FAISS (rag.store) and Milvus (rag.milvus, through Milvus
Lite), each with every index type; plus FAISS's auto policy.

Milvus Lite starts in about a second (0.8 s to import pymilvus, 0.3 s to open a folder), once per
session: one folder holds every test's collection, each under its own name. Without pymilvus
installed the Milvus cases are skipped, so the FAISS contract still runs everywhere.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from rag import store as store_module
from rag.config import Settings
from rag.indexing import load_index, refresh_index
from rag.store import VectorStore, choose_index_type, load_store, store_file

DIM = 32
KINDS = ["flat", "hnsw", "ivfpq"]


def clustered(n: int, seed: int = 0) -> np.ndarray:
    """Normalised vectors around 20 fixed centres: distinct, with near neighbours, like embeddings."""
    centres = np.random.default_rng(0).standard_normal((20, DIM))
    rng = np.random.default_rng(seed + 1)
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.standard_normal((n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def filled(make, n: int = 1200) -> tuple[VectorStore, np.ndarray, np.ndarray]:
    ids = np.arange(n, dtype=np.int64) * 7919 + 2**40  # large, sparse ids, as content hashes are
    vectors = clustered(n)
    store = make(n)
    store.add(ids, vectors)
    return store, ids, vectors


def exact_top(vectors: np.ndarray, ids: np.ndarray, query: np.ndarray, k: int) -> set[int]:
    return set(ids[np.argsort(-(vectors @ query))[:k]].tolist())


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    pytest.importorskip("pymilvus", reason="the Milvus backend is an extra: pip install 'rag[milvus]'")
    pytest.importorskip("milvus_lite")
    return str(tmp_path_factory.mktemp("milvus") / "milvus.db")


# Milvus Lite serves over gRPC inside the process: a server, so its cases are `integration`.
@pytest.fixture(params=["faiss", pytest.param("milvus", marks=pytest.mark.integration)])
def backend(request) -> str:
    return request.param


@pytest.fixture(params=KINDS)
def kind(request) -> str:
    return request.param


@pytest.fixture
def make(backend, kind, request):
    """make(expected) -> a new, empty store of this backend and index type."""
    if backend == "faiss":
        yield lambda expected=0: VectorStore(DIM, kind)
        return
    from rag.milvus import MilvusStore

    uri = request.getfixturevalue("milvus_uri")
    made = []

    def new(expected: int = 0):
        name = f"t_{len(made)}_{abs(hash(request.node.nodeid)):x}"
        made.append(MilvusStore.create(uri, name, DIM, kind, expected))
        return made[-1]

    yield new
    for store in made:
        store.drop()


def test_the_store_uses_the_requested_index_type(make, kind):
    store, ids, _ = filled(make)
    assert store.kind == kind
    assert len(store) == len(ids)
    assert np.array_equal(np.sort(store.ids()), np.sort(ids))


def test_get_returns_the_exact_vectors_added(make):
    store, ids, vectors = filled(make)
    pick = np.array([5, 0, 999, 17])
    assert np.allclose(store.get(ids[pick]), vectors[pick], atol=1e-6)


def test_get_of_an_unknown_id_raises(make):
    store, _, _ = filled(make)
    with pytest.raises(RuntimeError):
        store.get(np.array([12345], dtype=np.int64))


def test_search_finds_each_vector_itself_and_agrees_with_exact_search(make):
    store, ids, vectors = filled(make)
    queries = clustered(50, seed=1)
    scores, found = store.search(queries, 10)
    assert found.shape == (50, 10)
    recall = np.mean([len(set(f.tolist()) & exact_top(vectors, ids, q, 10)) / 10 for f, q in zip(found, queries)])
    assert recall >= 0.9
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first
    _, self_hits = store.search(vectors[:20], 1)
    assert self_hits[:, 0].tolist() == ids[:20].tolist()


def test_removed_vectors_are_gone_and_the_rest_still_found(make):
    store, ids, vectors = filled(make)
    gone = ids[:300]
    assert store.remove(gone) == 300
    assert len(store) == len(ids) - 300
    assert not np.isin(gone, store.ids()).any()
    with pytest.raises(RuntimeError):
        store.get(gone[:1])
    _, found = store.search(vectors[:300], 10)
    assert not np.isin(found, gone).any()
    assert np.allclose(store.get(ids[300:310]), vectors[300:310], atol=1e-6)
    _, self_hits = store.search(vectors[300:320], 1)
    assert self_hits[:, 0].tolist() == ids[300:320].tolist()


def test_removing_unknown_ids_removes_nothing(make):
    store, ids, _ = filled(make)
    assert store.remove(np.array([1, 2, 3], dtype=np.int64)) == 0
    assert len(store) == len(ids)


def test_adding_more_vectors_keeps_the_old_ones(make):
    store, ids, vectors = filled(make, n=600)
    more_ids = np.arange(600, dtype=np.int64) + 10
    more = clustered(600, seed=3)
    store.add(more_ids, more)
    assert len(store) == 1200
    assert np.allclose(store.get(ids[:5]), vectors[:5], atol=1e-6)
    assert np.allclose(store.get(more_ids[:5]), more[:5], atol=1e-6)
    _, self_hits = store.search(more[:20], 1)
    assert self_hits[:, 0].tolist() == more_ids[:20].tolist()


def test_save_and_load_round_trip_without_pickle(make, backend, kind, tmp_path):
    store, ids, vectors = filled(make)
    path = tmp_path / store_file("vectors", backend)
    store.save(path)
    if backend == "faiss":
        assert path.read_bytes()[:4] == b"IxM2"  # FAISS's IndexIDMap2 header, not a pickle
    else:
        assert json.loads(path.read_text("utf-8"))["count"] == len(ids)  # a JSON descriptor
    loaded = load_store(path)
    assert loaded.kind == kind
    assert np.array_equal(loaded.ids(), store.ids())
    queries = clustered(20, seed=2)
    assert np.array_equal(loaded.search(queries, 10)[1], store.search(queries, 10)[1])
    assert np.allclose(loaded.get(ids[:10]), vectors[:10], atol=1e-6)


def test_an_empty_store_searches_saves_and_loads(make, backend, tmp_path):
    store = make()
    scores, found = store.search(clustered(2), 5)
    assert found.shape == (2, 0) and scores.shape == (2, 0)
    store.save(tmp_path / store_file("empty", backend))
    assert len(load_store(tmp_path / store_file("empty", backend))) == 0
    assert store.get(np.array([], dtype=np.int64)).shape == (0, DIM)


def test_k_larger_than_the_store_returns_what_there_is(make):
    store, ids, _ = filled(make, n=100)
    _, found = store.search(clustered(1), 500)
    assert found.shape == (1, 100)
    assert set(found[0][found[0] >= 0].tolist()) <= set(ids.tolist())


def test_vectors_of_the_wrong_shape_are_refused(make):
    store = make()
    with pytest.raises(ValueError):
        store.add(np.arange(3), np.zeros((3, DIM + 1), np.float32))


def test_auto_is_exact_up_to_the_threshold_then_ivfpq():
    assert choose_index_type(0) == "flat"
    assert choose_index_type(store_module.FLAT_MAX_VECTORS) == "flat"
    assert choose_index_type(store_module.FLAT_MAX_VECTORS + 1) == "ivfpq"
    assert choose_index_type(10, "hnsw") == "hnsw"
    with pytest.raises(ValueError, match="unknown index type"):
        choose_index_type(10, "annoy")
    with pytest.raises(ValueError):
        VectorStore(DIM, "annoy")


def test_an_auto_store_switches_type_as_it_grows_and_shrinks(monkeypatch):
    monkeypatch.setattr(store_module, "FLAT_MAX_VECTORS", 1000)
    store = VectorStore(DIM)
    vectors = clustered(1500)
    ids = np.arange(1500, dtype=np.int64)
    store.add(ids[:800], vectors[:800])
    assert store.kind == "flat"
    store.add(ids[800:], vectors[800:])
    assert store.kind == "ivfpq"
    assert np.allclose(store.get(ids), vectors, atol=1e-6)  # carried across the switch
    store.remove(ids[:700])
    assert store.kind == "flat"
    assert np.array_equal(np.sort(store.ids()), ids[700:])


def test_ivfpq_retrains_when_it_has_outgrown_its_lists():
    store = VectorStore(DIM, "ivfpq")
    store.add(np.arange(200), clustered(200))
    small = store_module.ivf_lists(200)
    store.add(np.arange(200, 5200), clustered(5000, seed=4))
    assert store_module.ivf_lists(5200) > 2 * small
    assert store._ivf().nlist == store_module.ivf_lists(5200)


def test_the_index_type_setting_reaches_the_built_index(settings, embedder, monkeypatch):
    monkeypatch.setenv("RAG_INDEX_TYPE", "hnsw")
    assert Settings.from_env().index_type == "hnsw"
    refresh_index(settings.with_(index_type="hnsw"), embedder)
    index = load_index(settings.index_dir, embedder)
    assert index.chunk_vectors.kind == "hnsw"
    assert index.sentence_vectors.kind == "hnsw"
