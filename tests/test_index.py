import hashlib
import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from rag.chunking import int_id
from rag.config import PROJECT_ROOT, Settings
from rag.documents import CorpusEmptyError, normalize
from rag.indexing import (
    IndexError_,
    IndexMismatchError,
    IndexMissingError,
    current_generation,
    load_index,
    refresh_index,
    segment_folders,
)
from rag.lexical import BM25, Postings

ALL_DOCS = ["alpha.txt", "beta.md", "chinese.txt", "mixed.txt"]


def build(settings, embedder):
    report = refresh_index(settings, embedder)
    return report, load_index(settings.index_dir, embedder)


def bm25_docs(index, term: str) -> set[str]:
    rows, _ = index.bm25.top([term], k=100)
    return {index.chunks[r].doc_id for r in rows}


def assert_consistent(index) -> None:
    """Every chunk has exactly one vector, every sentence key one sentence vector, and no more."""
    chunk_ids = set(index.row_of_id)
    assert len(chunk_ids) == len(index.chunks)
    assert set(index.chunk_vectors.ids().tolist()) == chunk_ids
    assert len(index.chunk_vectors) == len(index.chunks)
    assert set(index.sentence_vectors.ids().tolist()) == set(index.chunk_rows_of_sentence)
    assert len(index.terms) == len(index.chunks)


def test_first_build_embeds_every_chunk_and_sentence(settings, embedder):
    report, index = build(settings, embedder)
    assert report.added == ALL_DOCS
    assert report.rebuilt_because is None
    assert {c.doc_id for c in index.chunks} == set(ALL_DOCS)
    assert len(index.chunks) > len(ALL_DOCS)  # the small chunk size splits each document
    assert report.embedded_chunks == len(index.chunks)
    assert report.embedded_sentences == len(index.chunk_rows_of_sentence)
    assert len(embedder.embedded_passages) == report.embedded_chunks + report.embedded_sentences
    assert_consistent(index)


@pytest.mark.parametrize("index_type", ["flat", "ivfpq"])
def test_texts_are_embedded_in_length_order_and_each_vector_stays_with_its_id(settings, embedder, index_type):
    """Sorted by length so batches pad less (bench/RESULTS.md); the order must not mix up ids."""
    report, index = build(settings.with_(index_type=index_type), embedder)
    n = report.embedded_chunks
    for texts in (embedder.embedded_passages[:n], embedder.embedded_passages[n:]):
        assert [len(t) for t in texts] == sorted(len(t) for t in texts)
    ids = np.array(sorted(index.row_of_id), dtype=np.int64)
    by_id = {int_id(c.chunk_id): c for c in index.chunks}
    want = np.stack([embedder.embed_passages([by_id[i].search_text])[0] for i in ids.tolist()])
    assert np.allclose(index.chunk_vectors.get(ids), want, atol=1e-6)


def test_a_refresh_without_changes_embeds_nothing_and_writes_nothing(settings, embedder):
    build(settings, embedder)
    generation = current_generation(settings.index_dir)
    embedder.embedded_passages.clear()
    report = refresh_index(settings, embedder)
    assert embedder.embedded_passages == []
    assert report.unchanged == ALL_DOCS
    assert (report.added, report.updated, report.removed) == ([], [], [])
    assert not report.changed
    assert current_generation(settings.index_dir) == generation


def test_editing_one_document_re_embeds_only_that_documents_text(settings, embedder):
    _, before = build(settings, embedder)
    alpha = settings.corpus_dir / "alpha.txt"
    edited = alpha.read_text(encoding="utf-8").replace("twice a year", "every spring")
    alpha.write_text(edited, encoding="utf-8")
    embedder.embedded_passages.clear()

    report, after = build(settings, embedder)
    assert report.updated == ["alpha.txt"]
    assert report.unchanged == ["beta.md", "chinese.txt", "mixed.txt"]
    seen = embedder.embedded_passages
    assert seen, "the edited document was not re-embedded"
    assert all(text in normalize(edited) for text in seen), seen
    assert any("every spring" in text for text in seen)
    # The edit is in the last sentence: chunks before it keep their text, id and vector.
    alpha_chunks = [c for c in after.chunks if c.doc_id == "alpha.txt"]
    assert report.embedded_chunks < len(alpha_chunks)
    assert {c.chunk_id for c in after.chunks if c.doc_id != "alpha.txt"} == {
        c.chunk_id for c in before.chunks if c.doc_id != "alpha.txt"
    }
    assert bm25_docs(after, "spring") == {"alpha.txt"}
    assert bm25_docs(after, "twice") == set()
    assert_consistent(after)


def test_deleting_a_document_removes_its_chunks_vectors_and_terms(settings, embedder):
    _, before = build(settings, embedder)
    assert bm25_docs(before, "quasar") == {"beta.md"}
    beta_chunks = sum(c.doc_id == "beta.md" for c in before.chunks)
    (settings.corpus_dir / "beta.md").unlink()
    embedder.embedded_passages.clear()

    report, after = build(settings, embedder)
    assert report.removed == ["beta.md"]
    assert embedder.embedded_passages == []
    assert all(c.doc_id != "beta.md" for c in after.chunks)
    assert len(after.chunk_vectors) == len(before.chunk_vectors) - beta_chunks
    assert len(after.sentence_vectors) < len(before.sentence_vectors)
    assert bm25_docs(after, "quasar") == set()
    assert "beta.md" not in after.documents
    assert_consistent(after)


def test_adding_a_document_embeds_only_the_new_one(settings, embedder):
    build(settings, embedder)
    new_text = "Gamma notes\nThe observatory bought a spectrograph.\n"
    (settings.corpus_dir / "sub").mkdir()
    (settings.corpus_dir / "sub" / "gamma.txt").write_text(new_text, encoding="utf-8")
    embedder.embedded_passages.clear()

    report, index = build(settings, embedder)
    assert report.added == ["sub/gamma.txt"]
    assert report.unchanged == ALL_DOCS
    assert embedder.embedded_passages
    assert all(text in normalize(new_text) for text in embedder.embedded_passages)
    assert bm25_docs(index, "spectrograph") == {"sub/gamma.txt"}
    assert_consistent(index)


def test_an_emptied_corpus_folder_is_refused_and_the_index_kept(settings, embedder):
    """An unmounted or mistyped folder looks empty: it must not wipe the index."""
    _, before = build(settings, embedder)
    for name in ALL_DOCS:
        (settings.corpus_dir / name).unlink()
    (settings.corpus_dir / "notes.pdf").write_bytes(b"%PDF")  # not a document type: still empty
    for rebuild in (False, True):
        with pytest.raises(CorpusEmptyError) as info:
            refresh_index(settings, embedder, rebuild=rebuild)
        message = str(info.value)
        assert f"{settings.corpus_dir} has no readable documents" in message
        assert "the index holds 4" in message and "--allow-empty" in message
        after = load_index(settings.index_dir, embedder)
        assert after.path == before.path and sorted(after.documents) == ALL_DOCS


def test_removing_every_document_with_allow_empty_leaves_an_empty_loadable_index(settings, embedder):
    build(settings, embedder)
    for name in ALL_DOCS:
        (settings.corpus_dir / name).unlink()
    report = refresh_index(settings, embedder, allow_empty=True)
    index = load_index(settings.index_dir, embedder)
    assert report.removed == ALL_DOCS
    assert index.chunks == []
    assert len(index.chunk_vectors) == 0
    assert len(index.sentence_vectors) == 0
    assert index.bm25.top(["quasar"], k=5)[0].size == 0


def test_another_embedding_model_triggers_a_full_rebuild_with_the_reason(settings, embedder, make_embedder):
    _, before = build(settings, embedder)
    other = make_embedder(name="other-model")
    report, after = build(settings, other)
    assert "fake-hash-64" in report.rebuilt_because
    assert "other-model" in report.rebuilt_because
    assert report.added == ALL_DOCS
    assert report.embedded_chunks == len(after.chunks) == len(before.chunks)
    assert len(other.embedded_passages) == report.embedded_chunks + report.embedded_sentences
    assert after.manifest["model"]["name"] == "other-model"


def test_changed_chunking_settings_trigger_a_full_rebuild(settings, embedder):
    build(settings, embedder)
    report = refresh_index(settings.with_(chunk_tokens=30), embedder)
    assert "chunking" in report.rebuilt_because
    assert report.embedded_chunks > 0


def test_rebuild_flag_re_embeds_everything(settings, embedder):
    _, index = build(settings, embedder)
    report = refresh_index(settings, embedder, rebuild=True)
    assert report.rebuilt_because == "--rebuild requested"
    assert report.embedded_chunks == len(index.chunks)


@pytest.mark.parametrize(("name", "dim"), [("other-model", 64), ("fake-hash-64", 32)])
def test_loading_with_another_model_or_dimension_says_to_rebuild(settings, embedder, make_embedder, name, dim):
    build(settings, embedder)
    with pytest.raises(IndexMismatchError, match="rag index --rebuild") as info:
        load_index(settings.index_dir, make_embedder(name=name, dim=dim))
    assert "fake-hash-64" in str(info.value)


def assert_bm25_matches_its_terms(index) -> None:
    """The saved matrix scores exactly as one built now from the stored terms would."""
    fresh = BM25(index.terms)
    assert index.bm25.vocabulary == fresh.vocabulary
    assert index.bm25.n_docs == fresh.n_docs == len(index.chunks)
    for term in list(fresh.vocabulary)[:50] + ["quasar", "zeppelin", "长三角"]:
        assert np.array_equal(index.bm25.scores([term]), fresh.scores([term])), term


def test_the_bm25_matrix_is_saved_with_the_index_and_follows_refreshes(settings, embedder):
    _, index = build(settings, embedder)
    # The term frequencies are memory-mapped from bm25.bin, not counted again from the terms at
    # load; the weights are computed there from the whole collection's statistics (segments).
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Postings, "build", lambda *a: pytest.fail("terms counted again at load"))
        patch.setattr(BM25, "__init__", lambda *a: pytest.fail("BM25 rebuilt from terms at load"))
        index = load_index(settings.index_dir, embedder)
    assert_bm25_matches_its_terms(index)
    assert bm25_docs(index, "quasar") == {"beta.md"}
    # idf depends on every document: an added document must change the saved weights of the others.
    (settings.corpus_dir / "more.txt").write_text("Quasar notes\nAnother quasar was seen.\n", encoding="utf-8")
    _, after = build(settings, embedder)
    assert after.bm25.idf_of("quasar") < index.bm25.idf_of("quasar")
    assert_bm25_matches_its_terms(after)
    assert bm25_docs(after, "quasar") == {"beta.md", "more.txt"}


def test_an_index_of_the_previous_format_says_to_rebuild_and_refresh_rebuilds_it(settings, embedder):
    """Format 3 indexes had no segments: they are refused by name, not half-loaded."""
    build(settings, embedder)
    generation = current_generation(settings.index_dir)
    manifest_path = generation / "manifest.json"
    manifest = json.loads(manifest_path.read_text("utf-8"))
    manifest["format"] = 3
    del manifest["segments"]
    manifest_path.write_text(json.dumps(manifest), encoding="utf-8")
    (settings.index_dir / "CURRENT").write_text(generation.name, encoding="utf-8")
    with pytest.raises(IndexMismatchError, match=r"index format 3 is not 4\. Run `rag index --rebuild`"):
        load_index(settings.index_dir, embedder)
    report, index = build(settings, embedder)
    assert "could not be read" in report.rebuilt_because and report.added == ALL_DOCS
    assert_bm25_matches_its_terms(index)


def test_loading_a_missing_index_says_to_build_one(tmp_path, embedder):
    with pytest.raises(IndexMissingError, match="rag index"):
        load_index(tmp_path / "nothing-here", embedder)


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["chunks.faiss", "chunks.jsonl", "sentences.faiss", "bm25.json", "bm25.bin"])
def test_a_damaged_index_file_is_named_on_load(settings, embedder, name):
    build(settings, embedder)
    flip_byte(segment_folders(settings.index_dir)[0] / name)
    with pytest.raises(IndexError_, match="damaged") as info:
        load_index(settings.index_dir, embedder)
    assert name in str(info.value)
    assert "rag index --rebuild" in str(info.value)


@pytest.mark.parametrize("name", ["chunks.faiss", "chunks.jsonl", "sentences.faiss", "bm25.json", "bm25.bin"])
def test_a_missing_index_file_is_named_on_load(settings, embedder, name):
    build(settings, embedder)
    (segment_folders(settings.index_dir)[0] / name).unlink()
    with pytest.raises(IndexError_, match="missing") as info:
        load_index(settings.index_dir, embedder)
    assert name in str(info.value)


def test_a_damaged_manifest_is_named_on_load(settings, embedder):
    build(settings, embedder)
    (current_generation(settings.index_dir) / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(IndexError_, match="manifest.json"):
        load_index(settings.index_dir, embedder)


def test_refresh_rebuilds_an_index_it_cannot_read(settings, embedder):
    build(settings, embedder)
    flip_byte(segment_folders(settings.index_dir)[0] / "chunks.faiss")
    report, index = build(settings, embedder)
    assert "could not be read" in report.rebuilt_because
    assert report.added == ALL_DOCS
    assert_consistent(index)


def test_an_unreadable_document_is_skipped_and_the_others_indexed(settings, embedder):
    (settings.corpus_dir / "broken.txt").write_bytes(b"\x00\x01\x02binary\x00" * 10)
    report, index = build(settings, embedder)
    assert [e.doc_id for e in report.skipped] == ["broken.txt"]
    assert "broken.txt" in report.summary()
    assert report.added == ALL_DOCS
    assert set(index.documents) == set(ALL_DOCS)


def test_a_document_that_becomes_unreadable_keeps_its_indexed_version(settings, embedder):
    build(settings, embedder)
    (settings.corpus_dir / "beta.md").write_bytes(b"\x00binary now\x00")
    report, index = build(settings, embedder)
    assert [e.doc_id for e in report.skipped] == ["beta.md"]
    assert report.removed == []
    assert bm25_docs(index, "quasar") == {"beta.md"}


def test_manifest_records_model_versions_hashes_and_times(settings, embedder):
    _, index = build(settings, embedder)
    manifest = json.loads((current_generation(settings.index_dir) / "manifest.json").read_text("utf-8"))
    assert manifest == index.manifest
    assert manifest["model"] == {"name": "fake-hash-64", "dimension": 64, "normalized": True}
    assert {"rag", "faiss-cpu", "numpy"} <= set(manifest["versions"])
    for doc_id in ALL_DOCS:
        raw = (settings.corpus_dir / doc_id).read_bytes()
        assert manifest["documents"][doc_id]["sha256"] == hashlib.sha256(raw).hexdigest()
    assert manifest["documents"]["chinese.txt"]["title"] == "长三角科技成果展"
    created = datetime.fromisoformat(manifest["created"])
    assert created.tzinfo is not None
    assert datetime.fromisoformat(manifest["updated"]) >= created
    files = {"chunks.jsonl", "chunks.faiss", "sentences.faiss", "bm25.json", "bm25.bin"}
    assert [set(s["checksums"]) for s in manifest["segments"]] == [files]
    assert [set(s["files"]) for s in manifest["segments"]] == [files]  # with their sizes and mtimes

    (settings.corpus_dir / "beta.md").unlink()
    _, after = build(settings, embedder)
    assert after.manifest["created"] == manifest["created"]
    assert "beta.md" not in after.manifest["documents"]


def test_a_refresh_replaces_the_generation_and_deletes_the_old_one(settings, embedder):
    build(settings, embedder)
    first = current_generation(settings.index_dir)
    (settings.corpus_dir / "beta.md").unlink()
    build(settings, embedder)
    second = current_generation(settings.index_dir)
    assert second != first
    assert not first.exists()
    assert sorted(p.name for p in settings.index_dir.iterdir() if not p.name.startswith((".", "seg-"))) == [
        "CURRENT",
        second.name,
    ]
    assert sorted(settings.index_dir.glob("seg-*")) == segment_folders(settings.index_dir)


def test_default_paths_follow_rag_home_not_the_repository(isolated_rag_home):
    settings = Settings.from_env()
    assert settings.index_dir == isolated_rag_home / "index"
    assert PROJECT_ROOT / "index" != settings.index_dir
    assert settings.corpus_dir == PROJECT_ROOT / "corpus"


def test_pooled_chunk_vectors_are_the_length_weighted_mean_of_their_sentences(settings, embedder):
    """--chunk-vectors pooled: the model reads sentences only, and a chunk's vector comes from them."""
    report, index = build(settings.with_(chunk_vectors="pooled"), embedder)
    assert len(embedder.embedded_passages) == report.embedded_sentences == len(index.chunk_rows_of_sentence)
    assert report.embedded_chunks == len(index.chunks)  # each chunk got a vector, none from the model
    assert_consistent(index)
    for chunk in index.chunks:
        sentences = index.sentence_vectors.get(np.array(index.sentence_keys(chunk), dtype=np.int64))
        lengths = np.array([s.end - s.start for s in chunk.sentences], dtype=np.float32)
        want = lengths @ sentences
        got = index.chunk_vectors.get(np.array([int_id(chunk.chunk_id)], dtype=np.int64))[0]
        assert np.allclose(got, want / np.linalg.norm(want), atol=1e-6)


def test_switching_to_or_from_int8_passages_rebuilds_with_the_reason(settings, embedder):
    """int8 vectors differ from float32's (cosine 0.996): one index holds one kind. bfloat16's agree
    with float32's to 0.99999, so "auto" may pick either on different machines without a rebuild."""
    assert settings.passage_precision == "auto"
    build(settings, embedder)
    for same in ("fp32", "bf16", "auto"):
        assert refresh_index(settings.with_(passage_precision=same), embedder).rebuilt_because is None
    report = refresh_index(settings.with_(passage_precision="int8"), embedder)
    assert "chunking" in report.rebuilt_because and "int8" in report.rebuilt_because
    report = refresh_index(settings.with_(passage_precision="int8"), embedder)
    assert report.rebuilt_because is None
    report = refresh_index(settings.with_(passage_precision="fp32"), embedder)  # and back
    assert "chunking" in report.rebuilt_because


def test_switching_how_chunk_vectors_are_made_rebuilds_and_a_pooled_refresh_costs_what_changed(settings, embedder):
    build(settings, embedder)
    pooled = settings.with_(chunk_vectors="pooled")
    report = refresh_index(pooled, embedder)
    assert "chunking" in report.rebuilt_because
    alpha = settings.corpus_dir / "alpha.txt"
    alpha.write_text(alpha.read_text(encoding="utf-8").replace("twice a year", "every spring"), encoding="utf-8")
    embedder.embedded_passages.clear()
    report, index = build(pooled, embedder)
    assert report.updated == ["alpha.txt"] and report.rebuilt_because is None
    assert embedder.embedded_passages and all("every spring" in t for t in embedder.embedded_passages)
    assert 0 < report.embedded_chunks < len(index.chunks)
    assert_consistent(index)
