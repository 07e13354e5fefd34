import os
import subprocess
import sys
from dataclasses import replace

import pytest

from rag.chunking import Chunk, chunk_document, split_sentences
from rag.documents import Document, normalize


def sentences_of(text: str) -> list[str]:
    return [text[s.start : s.end] for s in split_sentences(text)]


def make_doc(text: str, doc_id: str = "doc.txt") -> Document:
    return Document(doc_id=doc_id, title=text.strip().splitlines()[0], text=text, content_hash="x")


def count_words(texts):
    return [len(t.split()) for t in texts]


def assert_well_formed(doc: Document, chunks: list[Chunk]) -> None:
    for chunk in chunks:
        assert chunk.doc_id == doc.doc_id
        assert chunk.text == doc.text[chunk.start : chunk.end]
        assert chunk.sentences, chunk
        for s in chunk.sentences:
            assert chunk.start <= s.start < s.end <= chunk.end
            sentence = doc.text[s.start : s.end]
            assert sentence == sentence.strip(), repr(sentence)
    # Nothing is lost: every visible character lies in some chunk's sentence.
    covered = {i for c in chunks for s in c.sentences for i in range(s.start, s.end)}
    missing = [i for i, ch in enumerate(doc.text) if not ch.isspace() and i not in covered]
    assert not missing, doc.text[missing[0] : missing[0] + 20]


# --------------------------------------------------------------------------- sentences


def test_english_sentences_end_at_terminal_punctuation_followed_by_space():
    text = "The forum opened in Hefei. Did it rain? It did not! Version 1.2 shipped on time."
    assert sentences_of(text) == [
        "The forum opened in Hefei.",
        "Did it rain?",
        "It did not!",
        "Version 1.2 shipped on time.",
    ]


def test_chinese_sentences_end_at_chinese_punctuation_without_space():
    text = "论坛在合肥举行。展示了585项成果！为什么重要？因为合作；所以发展。"
    assert sentences_of(text) == ["论坛在合肥举行。", "展示了585项成果！", "为什么重要？", "因为合作；", "所以发展。"]


def test_mixed_text_and_line_breaks_split_sentences_and_closing_quotes_stay():
    text = "Annual Report\n\nThe forum was held in Hefei. 论坛在合肥举行。他说：“很好。”It showcased 585 results!"
    assert sentences_of(text) == [
        "Annual Report",
        "The forum was held in Hefei.",
        "论坛在合肥举行。",
        "他说：“很好。”",
        "It showcased 585 results!",
    ]


def test_abbreviations_do_not_end_a_sentence():
    text = "The U.S. Army hired Dr. Smith, e.g. for training in St. Louis. He left at 5 p.m. on Monday."
    assert sentences_of(text) == [
        "The U.S. Army hired Dr. Smith, e.g. for training in St. Louis.",
        "He left at 5 p.m. on Monday.",
    ]


WRAPPED = """Wrapped report

The regional council agreed on Tuesday that the new railway line
between the two harbour towns will open in spring, after the
engineers finish the bridge. Tickets go on sale in March.
"""


def test_hard_wrapped_lines_are_joined_into_their_sentences():
    assert sentences_of(WRAPPED) == [
        "Wrapped report",
        "The regional council agreed on Tuesday that the new railway line\nbetween the two harbour towns will open"
        " in spring, after the\nengineers finish the bridge.",
        "Tickets go on sale in March.",
    ]


def test_a_wrapped_chinese_sentence_is_one_sentence_searched_without_a_space():
    text = (
        "长三角一体化发展高层论坛在合肥举行，会议集中展示了长三角地区近\n年来取得的585项重大科技成果。其中上海132项。"
    )
    first, second = split_sentences(text)
    assert text[first.start : first.end].endswith("科技成果。") and "\n" in text[first.start : first.end]
    assert (
        normalize(text[first.start : first.end])
        == "长三角一体化发展高层论坛在合肥举行,会议集中展示了长三角地区近年来取得的585项重大科技成果。"
    )
    assert text[second.start : second.end] == "其中上海132项。"


@pytest.mark.parametrize("separator", ["\n\n", "\f", "\n \n"])
def test_a_blank_line_or_a_form_feed_always_ends_a_sentence(separator):
    line = "The regional council agreed on Tuesday that the new railway line"
    assert sentences_of(line + separator + line) == [line, line]


@pytest.mark.parametrize(
    "text",
    [
        # list items, numbered items, a markdown heading, table rows, short lines, label: value fields
        "Things the council agreed on during the long meeting this week\n- a new railway line\n- a bridge",
        "Steps the engineers will follow when the bridge is finally finished\n1. test the load\n2. open it",
        "# Results of the regional council meeting held in the harbour town\nThe council met on Tuesday.",
        "| city | results of the forum held in the harbour town this year |\n| Shanghai | 132 |\n| Jiangsu | 127 |",
        "Shanghai 132\nJiangsu 127\nZhejiang 165",
        "Yangtze River Delta integration forum opens in Hefei this morning\n发布时间: 2023-06-07 来源: Xinhua",
        "共同育新机开新局、更好服务国家大局\n要共同育新机开新局、更好服务国家大局。统筹推进疫情防控和经济社会发展工作。",
    ],
)
def test_items_headings_and_table_rows_one_per_line_stay_apart(text):
    lines = text.split("\n")
    found = sentences_of(text)
    for line in lines:  # each line starts a sentence of its own
        assert any(s.startswith(line.split("。")[0]) for s in found), (line, found)
    assert not any("\n" in s for s in found)


def test_whitespace_only_text_has_no_sentences():
    assert split_sentences("  \n\n\t ") == []


# --------------------------------------------------------------------------- chunks


@pytest.mark.parametrize("name", ["alpha.txt", "chinese.txt", "mixed.txt"])
def test_chunks_fit_the_token_budget_and_index_the_document_text(name, corpus_texts, count_tokens):
    doc = make_doc(corpus_texts[name])
    chunks = chunk_document(doc, count_tokens, max_tokens=20, overlap=5)
    assert len(chunks) > 1
    assert_well_formed(doc, chunks)
    for chunk in chunks:
        assert count_tokens([chunk.text])[0] <= 20, chunk.text


def test_a_sentence_longer_than_the_budget_is_cut_into_pieces_that_fit():
    long_sentence = " ".join(f"word{i}" for i in range(50)) + "."
    doc = make_doc(f"Short start. {long_sentence} Short end.")
    chunks = chunk_document(doc, count_words, max_tokens=12, overlap=2)
    assert_well_formed(doc, chunks)
    assert all(count_words([c.text])[0] <= 12 for c in chunks)
    # Cut at spaces: every word survives whole in some piece.
    pieces = [doc.text[s.start : s.end] for c in chunks for s in c.sentences]
    assert {w.rstrip(".") for p in pieces for w in p.split()} >= {f"word{i}" for i in range(50)}


def test_a_long_chinese_sentence_without_spaces_is_cut_to_fit(count_tokens):
    doc = make_doc("长" * 45 + "。")
    chunks = chunk_document(doc, count_tokens, max_tokens=10, overlap=2)
    assert len(chunks) >= 5
    assert_well_formed(doc, chunks)
    assert all(count_tokens([c.text])[0] <= 10 for c in chunks)


def test_consecutive_chunks_overlap_by_whole_sentences_within_the_overlap_budget():
    text = " ".join(f"Sentence number {i} is here." for i in range(12))  # 5 words each
    doc = make_doc(text)
    chunks = chunk_document(doc, count_words, max_tokens=16, overlap=5)
    assert len(chunks) >= 4
    for prev, nxt in zip(chunks, chunks[1:]):
        shared = [s for s in nxt.sentences if s in prev.sentences]
        assert shared, (prev.text, nxt.text)
        assert sum(count_words([doc.text[s.start : s.end] for s in shared])) <= 5
        assert nxt.start < prev.end


def test_every_chunk_adds_text_its_predecessor_did_not_have():
    # A 30-word sentence, two short ones, then a 35-word one: the overlap carried after the
    # first chunk (the two short sentences) leaves no room for the 35-word sentence, which
    # once produced a second chunk made only of sentences the first chunk already held.
    text = " ".join(["w " * 29 + "end.", "a b c d e.", "f g h i j.", "k " * 34 + "z."])
    doc = make_doc(text)
    chunks = chunk_document(doc, count_words, max_tokens=40, overlap=12)
    assert_well_formed(doc, chunks)
    for prev, nxt in zip(chunks, chunks[1:]):
        assert nxt.end > prev.end, (prev.text, nxt.text)


def test_overlap_not_smaller_than_max_tokens_is_refused(count_tokens):
    with pytest.raises(ValueError, match="overlap"):
        chunk_document(make_doc("One. Two. Three."), count_tokens, max_tokens=10, overlap=10)


# --------------------------------------------------------------------------- ids

_CHUNK_IDS_SCRIPT = """
import sys
from rag.chunking import chunk_document
from rag.documents import Document, normalize
doc = Document(sys.argv[1], "t", sys.stdin.read(), "x")
count = lambda texts: [len(t.split()) for t in texts]
print(" ".join(c.chunk_id for c in chunk_document(doc, count, 12, 3)))
"""


def test_chunk_ids_are_the_same_in_another_process_with_another_hash_seed(corpus_texts):
    doc = make_doc(corpus_texts["mixed.txt"], doc_id="sub/mixed.txt")
    ids = [c.chunk_id for c in chunk_document(doc, count_words, max_tokens=12, overlap=3)]
    out = subprocess.run(
        [sys.executable, "-c", _CHUNK_IDS_SCRIPT, doc.doc_id],
        input=doc.text,
        env=dict(os.environ, PYTHONHASHSEED="12345"),
        capture_output=True,
        text=True,
        check=True,
    )
    assert len(ids) > 1
    assert out.stdout.split() == ids


def test_chunk_ids_change_with_content_and_with_document(corpus_texts, count_tokens):
    doc = make_doc(corpus_texts["alpha.txt"], doc_id="alpha.txt")
    before = chunk_document(doc, count_tokens, max_tokens=20, overlap=5)
    edited = replace(doc, text=doc.text.replace("Local farmers grow rice", "Local farmers grow barley"))
    after = chunk_document(edited, count_tokens, max_tokens=20, overlap=5)
    changed = {c.chunk_id for c in after} - {c.chunk_id for c in before}
    assert changed
    assert all("barley" in c.text for c in after if c.chunk_id in changed)
    # Chunks that do not contain the edit keep their ids.
    assert {c.chunk_id for c in after if "barley" not in c.text} <= {c.chunk_id for c in before}

    renamed = replace(doc, doc_id="other.txt")
    renamed_ids = {c.chunk_id for c in chunk_document(renamed, count_tokens, 20, 5)}
    assert renamed_ids.isdisjoint(c.chunk_id for c in before)


def test_repeated_paragraphs_get_distinct_chunk_ids():
    paragraph = "The same notice is printed again. Please read it carefully.\n\n"
    doc = make_doc(paragraph * 6)
    chunks = chunk_document(doc, count_words, max_tokens=11, overlap=2)
    assert len({c.text for c in chunks}) < len(chunks)  # the texts do repeat
    assert len({c.chunk_id for c in chunks}) == len(chunks)


def test_without_blingfire_every_full_stop_ends_a_sentence(monkeypatch):
    import rag.chunking as chunking

    monkeypatch.setattr(chunking, "_blingfire", lambda: None)  # a platform it has no binary for
    text = "Dr. Smith went to Washington. He stayed."
    assert [text[s.start : s.end] for s in split_sentences(text)] == ["Dr.", "Smith went to Washington.", "He stayed."]
