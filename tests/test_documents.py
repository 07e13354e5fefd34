import hashlib
import threading
from pathlib import Path

import pytest

from rag.documents import load_corpus, normalize, title_of

PAGE = """<!doctype html>
<html>
<head>
  <title>Delta &amp; Corridor</title>
  <style>body { color: red; }</style>
  <script>var hidden = "tracking code";</script>
</head>
<body>
  <h1>Delta &amp; Corridor</h1>
  <p>The <b>G60</b> corridor links nine cities.</p>
  <script>alert("still hidden");</script>
  <ul><li>Shanghai</li><li>Hefei</li></ul>
</body>
</html>
"""


def write(folder: Path, name: str, data: str | bytes) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def load(folder: Path):
    documents, errors = load_corpus(folder)
    return {d.doc_id: d for d in documents}, {e.doc_id: e.reason for e in errors}


def test_txt_md_and_html_load_with_ids_relative_to_the_corpus(tmp_path):
    write(tmp_path, "notes.txt", "Plain notes\r\nsecond line\r\n")
    write(tmp_path, "guide/readme.md", "# Guide\n\nSome *markdown* text.\n")
    write(tmp_path, "page.html", PAGE)
    write(tmp_path, "data.json", '{"a": 1}')  # not a supported type: listed as skipped, never silent
    write(tmp_path, ".hidden.txt", "editor state")  # hidden files are not documents
    docs, errors = load(tmp_path)
    assert list(docs) == ["guide/readme.md", "notes.txt", "page.html"]
    assert list(errors) == ["data.json"] and errors["data.json"].startswith("unsupported type (.json)")
    assert docs["notes.txt"].text == "Plain notes\nsecond line\n"  # line endings unified
    assert docs["guide/readme.md"].title == "Guide"
    assert docs["guide/readme.md"].sections == ((0, "Guide"),)
    raw = (tmp_path / "notes.txt").read_bytes()
    assert docs["notes.txt"].content_hash == hashlib.sha256(raw).hexdigest()


def test_html_keeps_visible_text_and_drops_markup_scripts_and_styles(tmp_path):
    write(tmp_path, "page.html", PAGE)
    doc = load(tmp_path)[0]["page.html"]
    assert doc.title == "Delta & Corridor"
    assert doc.text.split("\n\n") == [
        "Delta & Corridor",
        "The G60 corridor links nine cities.",
        "Shanghai",
        "Hefei",
    ]
    for hidden in ("<", "tracking", "still hidden", "color"):
        assert hidden not in doc.text


def test_normalize_applies_nfkc_and_collapses_whitespace():
    assert normalize("  ＧＢ１８０３０，\u3000长三角\n\n  一体化\t ") == "GB18030, 长三角 一体化"
    assert normalize("ﬁve ①") == "five 1"


def test_title_is_the_first_non_empty_line_stripped():
    assert title_of("\n\n   Quarterly report  \nBody text") == "Quarterly report"
    assert title_of("   \n") == ""
    assert len(title_of("x" * 500)) == 200


def test_title_prefers_the_documents_own_then_skips_breadcrumbs_and_date_lines_then_the_file_name():
    assert title_of("First line", "Own Title", "f.txt") == "Own Title"
    assert title_of("当前位置:首页>热点资讯\n\n  长三角地区如何继续并肩奔跑?\n正文") == "长三角地区如何继续并肩奔跑?"
    assert title_of("Home > News > Local\nCity budget approved") == "City budget approved"
    assert title_of("发布时间:2023-06-07 16:36:13 来源:ourjiangsu.com\nDelta news") == "Delta news"
    assert title_of("Posted: June 3, 2024\n2024-06-03\nReal headline") == "Real headline"
    assert title_of("2023年长三角一体化发展\n") == "2023年长三角一体化发展"  # a headline that opens with a year stays
    assert title_of("Home > News\n2024-06-03", "", "report.txt") == "report.txt"


def test_gb18030_and_utf16_with_bom_decode(tmp_path):
    chinese = "长三角一体化发展高层论坛\n展示了585项重大科技成果。\n"
    gb = chinese.encode("gb18030")
    with pytest.raises(UnicodeDecodeError):
        gb.decode("utf-8")
    write(tmp_path, "gb.txt", gb)
    write(tmp_path, "utf16.txt", "Delta report 长三角\r\nline two\r\n".encode("utf-16"))  # BOM + LE
    write(tmp_path, "utf16be.md", b"\xfe\xff" + "BE 大端".encode("utf-16-be"))
    write(tmp_path, "utf8bom.txt", b"\xef\xbb\xbf" + "BOM title\nbody ü".encode())
    docs, errors = load(tmp_path)
    assert errors == {}
    assert docs["gb.txt"].text == chinese
    assert docs["gb.txt"].title == "长三角一体化发展高层论坛"
    assert docs["utf16.txt"].text == "Delta report 长三角\nline two\n"
    assert docs["utf16be.md"].text == "BE 大端"
    assert docs["utf8bom.txt"].title == "BOM title"


# Legacy encodings the byte-pattern rules refuse (Big5, cp1251) or misread as GB18030 (Shift-JIS):
# charset-normalizer reads them. Each text is long enough to say something, as a real file would.
LEGACY_TEXTS = {
    "big5.txt": ("長江三角洲區域一體化發展高層論壇在合肥舉行。\n會議展示了585項合作成果，臺灣學者也參加了。\n", "big5"),
    "sjis.txt": ("東京は日本の首都です。\n人口は約千四百万人で、世界で最も大きな都市の一つです。\n", "shift_jis"),
    "cp1251.txt": ("Москва — столица России.\nНаселение города составляет около тринадцати миллионов.\n", "cp1251"),
}


@pytest.mark.parametrize("name", LEGACY_TEXTS)
def test_big5_shift_jis_and_cp1251_are_read(tmp_path, name):
    text, encoding = LEGACY_TEXTS[name]
    raw = text.encode(encoding)
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")
    write(tmp_path, name, raw)
    docs, errors = load(tmp_path)
    assert errors == {}
    assert docs[name].text == text
    assert docs[name].title == text.splitlines()[0]


def test_english_with_a_few_gbk_symbols_stays_gbk_not_a_guess(tmp_path):
    # charset-normalizer alone takes this for Big5; the rules' reading wins where they accept one.
    text = "“Quoted” notes — about the lighthouse keeper… 长三角\n"
    write(tmp_path, "gbk-en.txt", text.encode("gbk"))
    docs, errors = load(tmp_path)
    assert errors == {}
    assert docs["gbk-en.txt"].text == text


def test_unreadable_files_are_reported_by_name_and_the_rest_still_load(tmp_path):
    write(tmp_path, "good.txt", "A good document.")
    write(tmp_path, "binary.txt", b"\x00\x01BIN\x00\x00\x07" + bytes(range(256)))
    write(tmp_path, "empty.md", b"")
    write(tmp_path, "blank.txt", "  \n\t\n")
    (tmp_path / "dangling.txt").symlink_to(tmp_path / "nowhere.txt")
    docs, errors = load(tmp_path)
    assert list(docs) == ["good.txt"]
    assert set(errors) == {"binary.txt", "empty.md", "blank.txt", "dangling.txt"}
    assert "binary" in errors["binary.txt"]
    assert "no text" in errors["empty.md"]
    assert "no text" in errors["blank.txt"]
    assert all(reason for reason in errors.values())


def test_a_missing_corpus_folder_raises_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(FileNotFoundError, match="does not exist") as info:
        load_corpus(missing)
    assert str(missing) in str(info.value)
    assert "RAG_CORPUS_DIR" in str(info.value)


def test_a_symlink_loop_does_not_hang_or_duplicate_documents(tmp_path):
    write(tmp_path, "top.txt", "Top level.")
    write(tmp_path, "sub/inner.txt", "Inner document.")
    (tmp_path / "sub" / "loop").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "sub" / "self").symlink_to(tmp_path / "sub", target_is_directory=True)
    result = {}
    worker = threading.Thread(target=lambda: result.update(load=load(tmp_path)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    assert not worker.is_alive(), "load_corpus did not finish within 10 s"
    docs, errors = result["load"]
    assert list(docs) == ["sub/inner.txt", "top.txt"]
    assert errors == {}


def test_hidden_files_and_folders_are_skipped(tmp_path):
    write(tmp_path, "visible.txt", "Shown.")
    write(tmp_path, ".hidden.txt", "Not shown.")
    write(tmp_path, ".git/notes.md", "Not shown either.")
    assert list(load(tmp_path)[0]) == ["visible.txt"]
