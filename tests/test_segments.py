"""Segments (issue 18): a refresh writes what changed as a new segment and marks the old deleted.

A segmented index must answer as a freshly built one over the same documents: the same chunks,
vector search finding no deleted chunk, BM25 scoring with the whole collection's statistics.
"""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest

import rag.indexing
from rag.chunking import int_id
from rag.indexing import (
    IndexError_,
    current_generation,
    load_index,
    optimize_index,
    refresh_index,
    segment_folders,
)
from rag.lexical import BM25
from rag.retrieval import retrieve

ALL_DOCS = ["alpha.txt", "beta.md", "chinese.txt", "mixed.txt"]
QUERIES = ["quasar telescope", "ferry islands tourists", "长三角 科技成果", "twice a year", "G60 corridor cities"]


def age(corpus, seconds: float = 3600) -> None:
    """Date every file back, as files long written are: their stamps then vouch for their content."""
    past = time.time() - seconds
    for path in corpus.rglob("*"):
        if path.is_file():
            os.utime(path, (past, past))


def segments(settings) -> list[dict]:
    return load_index(settings.index_dir).manifest["segments"]


def fresh_index(settings, embedder, tmp_path):
    """The same corpus built from scratch in another folder."""
    other = settings.with_(index_dir=tmp_path / "fresh-index")
    refresh_index(other, embedder)
    return load_index(other.index_dir, embedder)


def assert_same_answers(index, fresh, embedder) -> None:
    """The same live chunks, and every ranked list as a fresh build's (exact vectors: flat)."""
    assert sorted(c.chunk_id for c in index.chunks) == sorted(c.chunk_id for c in fresh.chunks)
    assert set(index.bm25.vocabulary) == set(fresh.bm25.vocabulary)
    by_chunk = {c.chunk_id: row for row, c in enumerate(fresh.chunks)}
    for term in list(fresh.bm25.vocabulary)[:80]:
        got, want = index.bm25.scores([term]), fresh.bm25.scores([term])
        assert np.array_equal(got, want[[by_chunk[c.chunk_id] for c in index.chunks]]), term
        assert index.bm25.idf_of(term) == fresh.bm25.idf_of(term)
    for query in QUERIES:
        vector = embedder.embed_queries([query])
        for got_store, want_store in ((index.chunk_vectors, fresh.chunk_vectors),):
            got, want = got_store.search(vector, 10), want_store.search(vector, 10)
            assert set(got[1][0].tolist()) == set(want[1][0].tolist()), query
            assert np.allclose(np.sort(got[0][0]), np.sort(want[0][0]), atol=1e-6)
        got, want = index.sentence_vectors.search(vector, 10), fresh.sentence_vectors.search(vector, 10)
        assert np.allclose(np.sort(got[0][0]), np.sort(want[0][0]), atol=1e-6), query
        hits = [h.chunk.chunk_id for h in retrieve(index, embedder, query).hits]
        assert sorted(hits) == sorted(h.chunk.chunk_id for h in retrieve(fresh, embedder, query).hits), query


def test_a_fresh_build_is_one_segment_searched_as_itself(settings, embedder):
    refresh_index(settings, embedder)
    index = load_index(settings.index_dir, embedder)
    [segment] = index.manifest["segments"]
    assert segment["deleted"] == [] and segment["chunks"] == len(index.chunks)
    assert type(index.chunk_vectors).__name__ == "VectorStore"  # not wrapped: exactly as written
    assert {d["segment"] for d in index.documents.values()} == {segment["name"]}
    assert index.manifest["counts"]["segments"] == 1


def test_editing_a_document_writes_a_segment_for_it_and_marks_its_old_chunks_deleted(settings, embedder, tmp_path):
    age(settings.corpus_dir)
    refresh_index(settings, embedder)
    first = segment_folders(settings.index_dir)
    written = {p: p.stat().st_mtime_ns for p in first[0].iterdir()}
    alpha = settings.corpus_dir / "alpha.txt"
    alpha.write_text(alpha.read_text("utf-8").replace("twice a year", "every spring"), encoding="utf-8")
    read = []
    real = rag.documents.load_document
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            rag.documents, "load_document", lambda path, *a, **k: read.append(path.name) or real(path, *a, **k)
        )
        report = refresh_index(settings, embedder)
    assert read == ["alpha.txt"]  # the others' stamps vouch for them: not read
    assert report.updated == ["alpha.txt"] and report.unchanged == ["beta.md", "chinese.txt", "mixed.txt"]
    old, new = segments(settings)
    assert old["deleted"] == ["alpha.txt"] and new["deleted"] == []
    assert {p: p.stat().st_mtime_ns for p in first[0].iterdir()} == written  # segments are never rewritten
    index = load_index(settings.index_dir, embedder)
    assert index.documents["alpha.txt"]["segment"] == new["name"]
    assert {c.doc_id for c in index.chunks[-new["chunks"] :]} == {"alpha.txt"}
    assert_same_answers(index, fresh_index(settings, embedder, tmp_path), embedder)


def test_deleting_a_document_only_marks_it_deleted_and_search_never_finds_it(settings, embedder, tmp_path):
    refresh_index(settings, embedder)
    before = load_index(settings.index_dir, embedder)
    beta = {int_id(c.chunk_id) for c in before.chunks if c.doc_id == "beta.md"}
    (settings.corpus_dir / "beta.md").unlink()
    embedder.embedded_passages.clear()
    report = refresh_index(settings, embedder)
    assert report.removed == ["beta.md"] and embedder.embedded_passages == []
    [segment] = segments(settings)
    assert segment["deleted"] == ["beta.md"]  # no new segment: a marker in the manifest
    index = load_index(settings.index_dir, embedder)
    for query in QUERIES + ["quasar"]:
        vector = embedder.embed_queries([query])
        _, ids = index.chunk_vectors.search(vector, len(before.chunks))  # every slot: deleted ones would show
        assert not beta & set(ids[0].tolist())
    assert "quasar" not in index.bm25.vocabulary  # only beta.md had it: as in a merged index
    assert_same_answers(index, fresh_index(settings, embedder, tmp_path), embedder)


def test_adding_documents_one_refresh_at_a_time_merges_segments_by_size(settings, embedder, tmp_path, monkeypatch):
    monkeypatch.setattr(rag.indexing, "MERGE_FACTOR", 3)
    refresh_index(settings, embedder)
    counts = []
    for i in range(7):
        (settings.corpus_dir / f"note{i}.txt").write_text(f"Note {i}\nThe keeper logged ship {i} at dawn.\n", "utf-8")
        embedder.embedded_passages.clear()
        report = refresh_index(settings, embedder)
        assert report.added == [f"note{i}.txt"]
        assert all(str(i) in text for text in embedder.embedded_passages)  # a merge embeds nothing
        counts.append(len(segments(settings)))
    # Level 0 never holds MERGE_FACTOR segments: the third small one merges them.
    assert max(counts) < 1 + 3 and counts != sorted(counts)
    assert len(list(settings.index_dir.glob("seg-*"))) == counts[-1]  # merged-away segments deleted
    assert_same_answers(load_index(settings.index_dir, embedder), fresh_index(settings, embedder, tmp_path), embedder)


def test_a_mostly_deleted_segment_is_rewritten(settings, embedder, tmp_path):
    refresh_index(settings, embedder)
    for name in ("alpha.txt", "beta.md", "chinese.txt"):
        (settings.corpus_dir / name).unlink()
    report = refresh_index(settings, embedder)
    assert report.merged_segments == 1
    [segment] = segments(settings)
    assert segment["deleted"] == [] and segment["deleted_chunks"] == 0
    assert_same_answers(load_index(settings.index_dir, embedder), fresh_index(settings, embedder, tmp_path), embedder)


def test_optimize_merges_everything_into_what_a_fresh_build_holds(settings, embedder, tmp_path):
    refresh_index(settings, embedder)
    (settings.corpus_dir / "beta.md").unlink()
    alpha = settings.corpus_dir / "alpha.txt"
    alpha.write_text(alpha.read_text("utf-8").replace("twice a year", "every spring"), encoding="utf-8")
    (settings.corpus_dir / "new.txt").write_text("Lighthouse notes\nThe keeper lights the lamp.\n", "utf-8")
    refresh_index(settings, embedder)
    assert len(segments(settings)) == 2
    embedder.embedded_passages.clear()
    report = optimize_index(settings, embedder)
    assert embedder.embedded_passages == [] and report.merged_segments == 2 and not report.changed
    [segment] = segments(settings)
    assert segment["deleted"] == []
    index, fresh = load_index(settings.index_dir, embedder), fresh_index(settings, embedder, tmp_path)
    # Chunks in the corpus's order, vectors and BM25 exactly a fresh build's.
    assert [c.chunk_id for c in index.chunks] == [c.chunk_id for c in fresh.chunks]
    assert index.bm25.vocabulary.keys() == fresh.bm25.vocabulary.keys()
    for term in fresh.bm25.vocabulary:
        assert np.array_equal(index.bm25.scores([term]), fresh.bm25.scores([term]))
    assert_same_answers(index, fresh, embedder)
    assert optimize_index(settings, embedder).merged_segments == 0  # one segment, nothing deleted: a no-op


def test_bm25_over_segments_scores_as_one_built_over_the_live_chunks(settings, embedder):
    refresh_index(settings, embedder)
    (settings.corpus_dir / "more.txt").write_text("Quasar notes\nAnother quasar was seen.\n", encoding="utf-8")
    refresh_index(settings, embedder)
    (settings.corpus_dir / "mixed.txt").unlink()
    refresh_index(settings, embedder)
    index = load_index(settings.index_dir, embedder)
    assert len(index.manifest["segments"]) == 2
    fresh = BM25(index.terms)
    assert set(index.bm25.vocabulary) == set(fresh.vocabulary) and index.bm25.n_docs == fresh.n_docs
    for term in fresh.vocabulary:
        assert np.array_equal(index.bm25.scores([term]), fresh.scores([term])), term
        assert sorted(index.bm25.rows_with(term).tolist()) == sorted(fresh.rows_with(term).tolist())


def test_a_file_changed_in_the_same_tick_as_it_was_read_is_read_again(settings, embedder):
    """Same size and mtime as recorded, new content: its stamp was too recent to vouch for it."""
    refresh_index(settings, embedder)
    alpha = settings.corpus_dir / "alpha.txt"
    stamp = alpha.stat()
    assert load_index(settings.index_dir).documents["alpha.txt"].get("stamp_unsure")
    alpha.write_text(alpha.read_text("utf-8").replace("twice a year", "every spring"), encoding="utf-8")
    os.utime(alpha, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert alpha.stat().st_size == stamp.st_size
    assert refresh_index(settings, embedder).updated == ["alpha.txt"]


def test_segments_no_generation_names_are_removed(settings, embedder):
    refresh_index(settings, embedder)
    live = segment_folders(settings.index_dir)
    shutil.copytree(live[0], settings.index_dir / "seg-000099")  # as a refresh killed before its generation
    (settings.index_dir / ".seg-000100.tmp").mkdir()
    (settings.corpus_dir / "beta.md").unlink()
    refresh_index(settings, embedder)
    assert sorted(settings.index_dir.glob("*seg-*")) == segment_folders(settings.index_dir) == live


def test_large_segment_files_are_trusted_by_size_and_mtime_and_verified_on_demand(settings, embedder, monkeypatch):
    monkeypatch.setattr(rag.indexing, "TRUST_STAT_BYTES", 0)  # every file counts as large
    refresh_index(settings, embedder)
    path = segment_folders(settings.index_dir)[0] / "chunks.faiss"
    st = path.stat()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(IndexError_, match="chunks.faiss is damaged"):  # mtime changed: hashed
        load_index(settings.index_dir, embedder)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # damage that keeps size and mtime ...
    load_index(settings.index_dir, embedder)  # ... is not looked for on every start (the trade-off)
    with pytest.raises(IndexError_, match="chunks.faiss is damaged"):
        load_index(settings.index_dir, embedder, verify=True)


def test_the_refresh_writes_only_the_new_segment_and_a_manifest(settings, embedder):
    age(settings.corpus_dir)
    refresh_index(settings, embedder)
    before = {p for p in settings.index_dir.rglob("*") if p.is_file()}
    (settings.corpus_dir / "new.txt").write_text("Lighthouse notes\nThe keeper lights the lamp.\n", "utf-8")
    refresh_index(settings, embedder)
    after = {p for p in settings.index_dir.rglob("*") if p.is_file()}
    new_files = {p.relative_to(settings.index_dir).parts[0] for p in after - before}
    gen = current_generation(settings.index_dir).name
    assert new_files == {gen, segment_folders(settings.index_dir)[-1].name}  # and CURRENT replaced


def test_the_merge_plan_merges_ten_of_a_size_and_cascades():
    def seg(name, chunks, deleted=0):
        return {"name": name, "chunks": chunks, "deleted_chunks": deleted}

    small = [seg(f"s{i}", 150) for i in range(10)]  # level 0; merged: 1,500 chunks, level 1
    middle = [seg(f"m{i}", 2000) for i in range(9)]  # level 1: nine, one short of a merge
    plan = rag.indexing._merge_plan([*middle, *small, seg("big", 500_000)])
    assert plan == [{f"s{i}" for i in range(10)}, {*(f"m{i}" for i in range(9)), "merge-1"}]
    assert rag.indexing._merge_plan([*middle, seg("big", 500_000)]) == []
    assert rag.indexing._merge_plan([seg("holed", 1000, deleted=600), seg("ok", 1000, deleted=100)]) == [{"holed"}]
