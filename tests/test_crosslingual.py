import pytest

from rag.crosslingual import (
    chinese_to_english,
    document_terms,
    english_to_chinese,
    joined_names,
    own_coverage,
    pinyin,
    query_expansion,
)
from rag.lexical import BM25, tokenize

# A hand-made slice of the two-way dictionary, so tests need neither CC-CEDICT nor a cache dir.
DICTIONARY = {
    "zh_en": {"董事长": ["chairman of the board"], "走廊": ["corridor", "aisle"], "城市": ["city", "town"]},
    "en_zh": {
        "chairman of the board": ["董事长"],
        "corridor": ["走廊", "廊"],
        "city": ["城市"],
        "yangtze river delta": ["长三角"],
    },
}


def test_pinyin_is_one_toneless_token_per_word():
    assert pinyin("芜湖") == "wuhu"
    assert pinyin("浙江") == "zhejiang"
    assert pinyin("绿色") == "luse"  # ü is written u, as in English text


def test_document_terms_add_pinyin_of_chinese_words_and_joined_names():
    terms = document_terms("合肥举行座谈会")
    assert "合肥" in terms and "hefei" in terms
    assert "gaolinghui" in document_terms("Gao Linghui said")
    assert joined_names("Reporter Hu Fengsheng") == ["reporterhu", "hufengsheng"]


@pytest.mark.parametrize("code", ["585", "2023", "g60", "5g", "1.2"])
def test_document_terms_keep_numbers_and_codes_whole(code):
    assert code in document_terms("G60科创走廊在2023年展示585项成果, 5G 规模1.2万亿元")
    assert code in document_terms("The G60 corridor showed 585 results in 2023; 5G worth 1.2 trillion")


def test_english_words_and_phrases_translate_to_chinese_headwords():
    out = english_to_chinese("Which corridor in the Yangtze River Delta?", dictionary=DICTIONARY)
    assert out["corridor"] == {"走廊": 0.5, "廊": 0.5}  # the weight is shared among candidates
    assert out["delta"] == {"长三角": 1.0}  # a phrase stands for each of its words
    assert english_to_chinese("corridors", dictionary=DICTIONARY)["corridors"] == {"走廊": 0.5, "廊": 0.5}


def test_chinese_words_translate_to_english_words():
    out = chinese_to_english("汪力成是哪家公司的董事长?", dictionary=DICTIONARY)
    assert out["董事长"] == {"chairman": 0.5, "board": 0.5}


def test_translations_keep_only_terms_the_index_knows():
    out = chinese_to_english("城市走廊", known={"city", "corridor"}, dictionary=DICTIONARY)
    assert out == {"城市": {"city": 1.0}, "走廊": {"corridor": 1.0}}


def test_query_expansion_joins_pinyin_of_names_jieba_splits():
    expansion = query_expansion("汪力成是哪家公司的董事长?", dictionary=DICTIONARY)
    assert "wanglicheng" in expansion  # jieba cuts 汪力|成; the pair's pinyin is the name
    assert "chairman" in expansion
    assert not set(expansion) & set(tokenize("汪力成是哪家公司的董事长?"))


def test_own_coverage_is_high_when_a_passage_says_what_the_question_says():
    bm25 = BM25([["hefei", "symposium"], ["合肥", "座谈会", "hefei"]])
    assert own_coverage(bm25, ["hefei", "symposium"]) == pytest.approx(1.0)
    assert own_coverage(bm25, ["unknown"]) == 0.0
