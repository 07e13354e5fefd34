"""BM25 saved as raw arrays + a JSON layout and memory-mapped back (rag.lexical.BM25.save/load)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from rag.lexical import BM25


def random_docs(n: int, seed: int = 0) -> list[list[str]]:
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(300)] + ["长三角", "科技", "585", "g60"]
    # Skewed draws, so some terms are in most documents and idf varies widely.
    return [
        [words[min(int(rng.expovariate(0.02)), len(words) - 1)] for _ in range(rng.randint(0, 40))] for _ in range(n)
    ]


def saved_and_loaded(bm25: BM25, tmp_path) -> BM25:
    paths = [tmp_path / name for name in BM25.FILES]
    bm25.save(*paths)
    return BM25.load(*paths)


def test_a_loaded_matrix_scores_exactly_as_the_one_saved(tmp_path):
    docs = random_docs(500)
    built = BM25(docs)
    loaded = saved_and_loaded(built, tmp_path)
    assert loaded.vocabulary == built.vocabulary
    assert loaded.n_docs == built.n_docs == 500
    assert np.array_equal(loaded.idf, built.idf)
    rng = random.Random(1)
    vocabulary = list(built.vocabulary)
    for _ in range(100):
        query = rng.sample(vocabulary, 3) + ["never-seen"]
        weights = [rng.uniform(0.1, 2.0) for _ in query]
        assert np.array_equal(loaded.scores(query, weights), built.scores(query, weights))
        for got, want in zip(loaded.top(query, 10), built.top(query, 10)):
            assert np.array_equal(got, want)
    for term in vocabulary[:20] + ["never-seen"]:
        assert np.array_equal(loaded.rows_with(term), built.rows_with(term))
        assert loaded.idf_of(term) == built.idf_of(term)


def mapped(array: np.ndarray) -> bool:
    while array is not None and not isinstance(array, np.memmap):
        array = getattr(array, "base", None)
    return array is not None


def test_the_loaded_arrays_are_read_only_views_of_the_file(tmp_path):
    built = BM25(random_docs(50))
    loaded = saved_and_loaded(built, tmp_path)
    for array in (loaded.idf, loaded.rows_with("w0")):
        assert not array.flags.writeable
        assert mapped(array)  # mapped, not read into memory
    assert not mapped(built.idf)


def test_the_layout_is_plain_json(tmp_path):
    BM25([["river", "delta"], ["长三角"]]).save(*(tmp_path / name for name in BM25.FILES))
    layout = json.loads((tmp_path / "bm25.json").read_text("utf-8"))
    assert layout == {"format": 1, "n_docs": 2, "nnz": 3, "vocabulary": ["river", "delta", "长三角"]}


@pytest.mark.parametrize("docs", [[], [[]], [[], ["only"]]])
def test_empty_collections_and_documents_round_trip(tmp_path, docs):
    loaded = saved_and_loaded(BM25(docs), tmp_path)
    assert loaded.n_docs == len(docs)
    assert loaded.top(["only"], 5)[0].tolist() == ([1] if ["only"] in docs else [])


def test_a_truncated_array_file_is_refused_by_name(tmp_path):
    BM25(random_docs(50)).save(*(tmp_path / name for name in BM25.FILES))
    arrays = tmp_path / "bm25.bin"
    arrays.write_bytes(arrays.read_bytes()[:-4])
    with pytest.raises(ValueError, match="bm25.bin holds"):
        BM25.load(*(tmp_path / name for name in BM25.FILES))


def test_a_layout_of_another_format_is_refused(tmp_path):
    BM25([["a"]]).save(*(tmp_path / name for name in BM25.FILES))
    layout = tmp_path / "bm25.json"
    layout.write_text(layout.read_text("utf-8").replace('"format": 1', '"format": 9'), encoding="utf-8")
    with pytest.raises(ValueError, match="BM25 format 9"):
        BM25.load(*(tmp_path / name for name in BM25.FILES))
