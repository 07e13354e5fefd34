import numpy as np
import pytest

from rag.documents import normalize
from rag.indexing import load_index, refresh_index
from rag.lexical import BM25, tokenize
from rag.retrieval import FusionWeights, reciprocal_rank_fusion, retrieve


def test_reciprocal_rank_fusion_sums_weighted_reciprocal_ranks():
    fused = reciprocal_rank_fusion([[1, 2, 3], [3, 1], [4]], weights=[1.0, 1.0, 0.5], k=60)
    expected = [
        (1, 1 / 61 + 1 / 62),
        (3, 1 / 63 + 1 / 61),
        (2, 1 / 62),
        (4, 0.5 / 61),
    ]
    assert [item for item, _ in fused] == [item for item, _ in expected]
    assert [score for _, score in fused] == pytest.approx([score for _, score in expected])


def test_reciprocal_rank_fusion_breaks_ties_by_first_appearance():
    fused = reciprocal_rank_fusion([[7, 8], [8, 7]], weights=[1.0, 1.0], k=10)
    assert [item for item, _ in fused] == [7, 8]
    assert fused[0][1] == pytest.approx(fused[1][1]) == pytest.approx(1 / 11 + 1 / 12)


def test_reciprocal_rank_fusion_with_zero_weight_ignores_that_list():
    fused = reciprocal_rank_fusion([[1, 2], [2, 1]], weights=[0.0, 1.0], k=60)
    assert [item for item, _ in fused] == [2, 1]


def test_bm25_ranks_the_document_with_the_rare_term_first():
    docs = [
        ["delta", "river", "port", "river"],
        ["delta", "river", "zeppelin"],
        ["delta", "port"],
    ]
    bm25 = BM25(docs)
    rows, scores = bm25.top(["river", "zeppelin"], k=3)
    assert rows.tolist() == [1, 0]  # doc 2 shares no query term and is left out
    assert scores[0] > scores[1] > 0
    assert bm25.idf_of("zeppelin") > bm25.idf_of("river") > bm25.idf_of("delta")


def test_bm25_top_k_is_the_best_k_of_the_full_ranking_in_order():
    rng = np.random.default_rng(3)
    vocabulary = [f"w{i}" for i in range(50)]
    docs = [list(rng.choice(vocabulary, size=int(rng.integers(3, 30)))) for _ in range(500)]
    bm25 = BM25(docs)
    query = ["w1", "w7", "w19", "w33"]
    full = bm25.scores(query)
    rows, scores = bm25.top(query, k=10)
    assert len(rows) == 10
    assert scores.tolist() == sorted(full[full > 0], reverse=True)[:10]
    assert np.allclose(full[rows], scores)


def test_bm25_returns_nothing_for_unknown_terms():
    bm25 = BM25([["a", "b"], ["c"]])
    rows, scores = bm25.top(["unknown"], k=5)
    assert rows.size == 0 and scores.size == 0


@pytest.mark.parametrize("code", ["585", "2023", "g60", "5g", "1.2"])
def test_tokenize_keeps_numbers_and_codes_whole(code):
    terms = tokenize(normalize("G60科创走廊在2023年展示585项成果, 5G 覆盖率提高1.2倍"))
    assert code in terms


def test_tokenize_segments_chinese_and_drops_stopwords():
    terms = tokenize("长三角一体化")
    assert {"长三角", "一体化"} <= set(terms)
    assert "长三角一体化" not in terms
    assert tokenize("What is the delta?") == ["delta"]
    assert "多少" not in tokenize("展示了多少项成果")


def test_tokenize_lowercases_english_and_removes_thousands_separators():
    assert tokenize("Apple's iPhone15 sold 1,200 units") == ["apple's", "iphone15", "sold", "1200", "units"]


@pytest.fixture
def index(settings, embedder):
    refresh_index(settings, embedder)
    return load_index(settings.index_dir, embedder)


@pytest.mark.parametrize(
    ("question", "doc_id"),
    [
        ("Which aircraft carries tourists? The zeppelin?", "alpha.txt"),
        ("What did the club observe through the telescope?", "beta.md"),
        ("论坛集中展示了多少项重大科技成果?", "chinese.txt"),
        ("Which corridor links nine cities?", "mixed.txt"),
    ],
)
def test_hybrid_retrieval_puts_the_document_with_the_keyword_first(index, embedder, question, doc_id):
    result = retrieve(index, embedder, question, passages=3)
    assert result.hits[0].chunk.doc_id == doc_id
    assert embedder.embedded_queries == [normalize(question)]
    assert result.judged == len(result.hits) <= 4  # three, and the translated list's first if not among them
    assert [h.score for h in result.hits[:3]] == sorted((h.score for h in result.hits[:3]), reverse=True)


def test_retrieval_does_the_callers_work_while_the_question_is_embedded(index, embedder):
    question = "What did the club observe through the telescope?"
    done = []
    with_work = retrieve(index, embedder, question, passages=3, meanwhile=done.append)
    assert done == [normalize(question)] == [with_work.query]
    assert with_work.hits == retrieve(index, embedder, question, passages=3).hits


def test_retrieval_deepens_past_the_candidates_for_evaluation(index, embedder):
    question = "How many major achievements did the forum show?"
    shallow = retrieve(index, embedder, question, passages=3)
    deep = retrieve(index, embedder, question, passages=3, depth=8)
    assert deep.hits[: deep.judged] == shallow.hits
    assert len(deep.hits) > len(shallow.hits)
    assert len({h.row for h in deep.hits}) == len(deep.hits)


def test_each_retriever_alone_finds_the_unique_keyword(index, embedder):
    question = "zeppelin Aurora"
    lexical = retrieve(index, embedder, question, weights=FusionWeights(chunks=0, sentences=0, lexical=1))
    dense = retrieve(index, embedder, question, weights=FusionWeights(chunks=1, sentences=1, lexical=0))
    for result in (lexical, dense):
        top = result.hits[0]
        assert top.chunk.doc_id == "alpha.txt"
        assert "zeppelin Aurora" in top.chunk.text
    assert lexical.hits[0].lexical > 0
    assert dense.hits[0].dense == max(h.dense for h in dense.hits) > 0.3


def test_retrieval_over_an_empty_index_returns_no_hits(settings, embedder, corpus_dir):
    for path in corpus_dir.iterdir():
        path.unlink()
    refresh_index(settings, embedder)
    result = retrieve(load_index(settings.index_dir, embedder), embedder, "anything at all?")
    assert result.hits == []


def test_the_translated_lists_first_passage_is_a_candidate_wherever_fusion_put_it(index, embedder):
    # No passage holds 望远镜 ("telescope"): only its translation finds the English passage that
    # says who paid for it. With the translated list weighted 0, fusion ranks that passage low.
    question = "望远镜的钱是谁出的?"
    no_translation = FusionWeights(translated=0.0)
    fused = retrieve(index, embedder, question, passages=4, weights=no_translation)
    assert not any("paid for" in h.chunk.text for h in fused.hits[:4])
    assert "The telescope was paid for" in fused.hits[4].chunk.text
    assert fused.judged == 5
