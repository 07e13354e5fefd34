"""Building on a Ray cluster (rag.ray_build): the same index as a local build, incremental as locally.

The fast tests run the workers' batch function in-process with the fake embedder, through the
same PreparedCorpus hook refresh_index takes from the cluster. The integration test starts a local
Ray cluster of two worker processes (loopback only, no dashboard, no usage statistics) and
compares its build of the bundled corpus with a local one, with the real model.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import rag.assistant
from rag.cli import main
from rag.config import PROJECT_ROOT, Settings
from rag.documents import corpus_paths, normalize
from rag.indexing import load_index, refresh_index
from rag.ray_build import (
    INSTALL_HINT,
    RayUnavailableError,
    _import_ray,
    _indexed_hashes,
    build_batch,
    build_on_cluster,
    collect,
    input_rows,
    start_local_cluster,
    worker_config,
)
from tests.conftest import FakeEmbedder


@pytest.fixture
def corpus(corpus_dir: Path) -> Path:
    (corpus_dir / "broken.txt").write_bytes(b"\x00\x01\x02\x03" * 64)  # skipped with a reason
    return corpus_dir


def _prepare_in_process(settings: Settings, worker_embedder, driver_embedder, old_sha=None, batch=2):
    """What build_on_cluster returns, with the workers' batch function run here instead of on Ray."""
    rows = input_rows(corpus_paths(settings.corpus_dir), old_sha or {})
    config = worker_config(settings)
    out = []
    for i in range(0, len(rows), batch):
        part = rows[i : i + batch]
        columns = {key: np.asarray([r[key] for r in part], dtype=object) for key in part[0]}
        result = build_batch(columns, worker_embedder, config, f"w{i % 2}")
        out.extend(dict(zip(result, values)) for values in zip(*result.values()))
    return collect(out[::-1], driver_embedder)  # in any order, as workers finish


def _vectors(index, which: str) -> dict[int, np.ndarray]:
    store = getattr(index, which)
    ids = store.ids()
    return dict(zip(ids.tolist(), store.get(ids)))


def _assert_same_index(local_dir: Path, other_dir: Path, min_cosine: float) -> None:
    local, other = load_index(local_dir), load_index(other_dir)
    assert [c.chunk_id for c in other.chunks] == [c.chunk_id for c in local.chunks]
    assert other.chunks == local.chunks and other.terms == local.terms
    for key in ("documents", "skipped", "counts", "chunking", "model"):
        assert other.manifest[key] == local.manifest[key], key
    for which in ("chunk_vectors", "sentence_vectors"):
        a, b = _vectors(local, which), _vectors(other, which)
        assert a.keys() == b.keys(), which
        ids = sorted(a)
        cosine = np.sum(np.stack([a[i] for i in ids]) * np.stack([b[i] for i in ids]), axis=1)
        assert cosine.min() >= min_cosine, (which, float(cosine.min()))


def test_prepared_corpus_writes_the_index_a_local_build_writes(corpus, settings, tmp_path):
    local = settings.with_(index_dir=tmp_path / "local")
    local_report = refresh_index(local, FakeEmbedder())

    remote = settings.with_(index_dir=tmp_path / "remote")
    driver = FakeEmbedder()
    built = _prepare_in_process(remote, FakeEmbedder(), driver)
    report = refresh_index(remote, driver, prepared=built.prepared)

    assert driver.embedded_passages == []  # every vector came from the workers
    assert [e.doc_id for e in report.skipped] == ["broken.txt"]
    assert report.added == local_report.added and report.embedded_chunks == local_report.embedded_chunks
    assert report.embedded_sentences == local_report.embedded_sentences
    _assert_same_index(local.index_dir, remote.index_dir, min_cosine=0.99999)
    assert sum(w.chunked for w in built.workers.values()) == 4
    assert sum(w.documents for w in built.workers.values()) == 5
    assert len(load_index(remote.index_dir).chunks) > 4  # several chunks a document: offsets and ids tested


def test_only_changed_documents_are_chunked_and_embedded_on_workers(corpus, settings, corpus_texts):
    refresh_index(settings, FakeEmbedder())
    before = load_index(settings.index_dir)
    (corpus / "beta.md").write_text(corpus_texts["beta.md"] + "\nThe comet returns in 2061.\n", encoding="utf-8")

    workers, driver = FakeEmbedder(), FakeEmbedder()
    built = _prepare_in_process(settings, workers, driver, old_sha=_indexed_hashes(settings, driver))
    report = refresh_index(settings, driver, prepared=built.prepared)

    assert report.updated == ["beta.md"] and sorted(report.unchanged) == ["alpha.txt", "chinese.txt", "mixed.txt"]
    assert set(built.prepared.chunked) == {"beta.md"}  # the others were read and hashed only
    beta = normalize(corpus_texts["beta.md"] + "The comet returns in 2061.")
    assert workers.embedded_passages and all(t in beta for t in workers.embedded_passages)
    assert driver.embedded_passages == []
    after = load_index(settings.index_dir)
    old_vectors, new_vectors = _vectors(before, "sentence_vectors"), _vectors(after, "sentence_vectors")
    carried = set(old_vectors) & set(new_vectors)
    assert carried and all(np.array_equal(old_vectors[k], new_vectors[k]) for k in carried)
    assert report.embedded_sentences == len(set(new_vectors) - set(old_vectors)) == 1


def test_a_document_the_cluster_did_not_chunk_is_chunked_on_the_driver(corpus, settings, corpus_texts, tmp_path):
    # The cluster's guess of what changed is made without the index lock: if it is stale, the
    # driver makes what is missing, so the index is still right.
    local = settings.with_(index_dir=tmp_path / "local")
    refresh_index(local, FakeEmbedder())
    remote = settings.with_(index_dir=tmp_path / "remote")
    driver = FakeEmbedder()
    # As if the live index had held alpha.txt when the cluster looked, and not when the driver writes.
    sha = hashlib.sha256((corpus / "alpha.txt").read_bytes()).hexdigest()
    built = _prepare_in_process(remote, FakeEmbedder(), driver, old_sha={"alpha.txt": sha})
    assert "alpha.txt" not in built.prepared.chunked
    refresh_index(remote, driver, prepared=built.prepared)
    alpha = normalize(corpus_texts["alpha.txt"])
    assert driver.embedded_passages and all(t in alpha for t in driver.embedded_passages)
    _assert_same_index(local.index_dir, remote.index_dir, min_cosine=0.99999)


def test_ray_not_installed_names_the_install_command(corpus, settings, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RayUnavailableError, match=re.escape(INSTALL_HINT)):
        build_on_cluster(settings, FakeEmbedder())

    class Assistant:  # the CLI's, with the fake model
        def __init__(self, settings):
            self.embedder = FakeEmbedder()

    monkeypatch.setattr(rag.assistant, "Assistant", Assistant)
    assert main(["index", "--ray", "--corpus", str(corpus), "--index-dir", str(settings.index_dir)]) == 1
    assert (
        "rag index: building with --ray needs Ray, an optional extra: pip install 'rag[ray]'" in capsys.readouterr().err
    )
    assert not settings.index_dir.exists() or not (settings.index_dir / "CURRENT").exists()
    assert main(["index", "--corpus", str(corpus), "--index-dir", str(settings.index_dir)]) == 0  # no Ray needed
    assert (settings.index_dir / "CURRENT").exists()


@pytest.mark.integration
@pytest.mark.slow
def test_ray_build_of_the_bundled_corpus_matches_a_local_build(tmp_path, real_embedder, model_cache_dir):
    pytest.importorskip("ray", reason="building on Ray is an extra: pip install 'rag[ray]'")
    ray = _import_ray()  # sets RAY_USAGE_STATS_ENABLED=0 before a cluster starts
    embedder = real_embedder
    corpus = tmp_path / "bundled"
    shutil.copytree(PROJECT_ROOT / "corpus", corpus)
    local = Settings(corpus_dir=corpus, index_dir=tmp_path / "local", cache_dir=model_cache_dir)
    remote = local.with_(index_dir=tmp_path / "ray")
    refresh_index(local, embedder)

    # Ray's socket paths must stay short (AF_UNIX limit): not under pytest's deep tmp_path.
    ray_tmp = tempfile.mkdtemp(prefix="rag-ray-", dir="/tmp")
    start_local_cluster(num_cpus=2, temp_dir=ray_tmp)  # loopback only, no dashboard
    try:
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        built = build_on_cluster(remote, embedder, workers=2)
        assert len(built.workers) == 2  # both worker processes took part
        report = refresh_index(remote, embedder, prepared=built.prepared)
        assert len(report.added) == 5 and report.embedded_chunks > 0
        _assert_same_index(local.index_dir, remote.index_dir, min_cosine=0.999)

        # Incremental: one document edited; only it is chunked and embedded on the cluster.
        edited = sorted(corpus.iterdir())[0]
        edited.write_text(edited.read_text(encoding="utf-8") + "\n\nA sentence added for the refresh.\n")
        before = load_index(remote.index_dir)
        built = build_on_cluster(remote, embedder, workers=2)
        assert list(built.prepared.chunked) == [edited.name]
        report = refresh_index(remote, embedder, prepared=built.prepared)
        assert report.updated == [edited.name] and len(report.unchanged) == 4
        after = load_index(remote.index_dir)
        old, new = _vectors(before, "chunk_vectors"), _vectors(after, "chunk_vectors")
        unchanged_ids = {int(k) for k in old} & set(new)
        assert all(np.array_equal(old[k], new[k]) for k in unchanged_ids)  # carried, not re-made
        refresh_index(local, embedder)  # the same edit, built locally
        _assert_same_index(local.index_dir, remote.index_dir, min_cosine=0.999)
        manifest = json.loads((after.path / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["counts"] == load_index(local.index_dir).manifest["counts"]
    finally:
        ray.shutdown()
        shutil.rmtree(ray_tmp, ignore_errors=True)
