import pytest

from rag.assistant import Assistant


class FakeJudge:
    def __init__(self):
        self.calls = []

    def similarities(self, question, sentences):
        import numpy as np

        self.calls.append((question, list(sentences)))
        return np.array([0.9 if "telescope" in s else 0.1 for s in sentences])


def test_the_assistant_asks_the_sentence_encoder_unless_it_is_turned_off(settings, embedder, monkeypatch):
    import rag.assistant

    judge = FakeJudge()
    monkeypatch.setattr(rag.assistant, "load_judge", lambda: judge)
    on = Assistant(settings.with_(rerank_sentences=3), embedder)
    on.refresh()
    on.ask("What did the club observe through the new telescope?")
    assert judge.calls and all(len(sentences) <= 3 for _, sentences in judge.calls)
    assert Assistant(settings.with_(rerank_sentences=0), embedder).judge is None


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
