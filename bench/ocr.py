"""OCR: how fast Tesseract reads a page, and whether choosing languages per page pays.

Run: python bench/ocr.py [--repeat 2]
Renders three 300-dpi pages in code (English, Chinese, and both: half a page each, set in WQY
Micro Hei from Debian's fonts-wqy-microhei) and reads each with several language choices:
all three languages at once (the default), fewer languages, and two per-page choices that first
look at the page (Tesseract's script detection, `osd`; or a quick English pass whose share of
unreadable words says whether Chinese is likely). Prints seconds per page and the character
accuracy (difflib ratio against the rendered text, spaces ignored) for each.

    python bench/ocr.py --pipeline      # end to end instead: a PDF of the four pages, scanned

reads that PDF through rag.documents.load_document twice with a new cache: pages/s of the first
(rendering and OCR) and the second (every page from the cache).
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402

from rag.formats.ocr import clean_ocr_text  # noqa: E402

FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
ENGLISH = [
    "The harbour authority opened a new container terminal in March.",
    "It can handle two million containers a year, twice the old capacity.",
    "Ships from Rotterdam and Singapore were the first to berth there.",
    "The terminal runs on electricity from the offshore wind farm.",
    "Local schools visited the cranes during the open day in April.",
    "A second terminal is planned for the northern bank of the river.",
]
CHINESE = [
    "港务局于三月启用了新的集装箱码头。",
    "该码头每年可处理两百万个集装箱，是旧码头的两倍。",
    "来自鹿特丹和新加坡的船只最先在此停靠。",
    "码头使用海上风电场提供的电力运行。",
    "四月开放日期间，当地学校参观了码头的起重机。",
    "河流北岸还计划建设第二个码头。",
]
TRADITIONAL = [
    "港務局於三月啟用了新的貨櫃碼頭。",
    "該碼頭每年可處理兩百萬個貨櫃，是舊碼頭的兩倍。",
    "來自鹿特丹和新加坡的船隻最先在此停靠。",
    "碼頭使用離岸風電場提供的電力運轉。",
    "四月開放日期間，當地學校參觀了碼頭的起重機。",
    "河流北岸還計劃興建第二個碼頭。",
]
PAGES = {
    "english": ENGLISH * 2,
    "simplified": CHINESE * 2,
    "traditional": TRADITIONAL * 2,
    "bilingual": ENGLISH + CHINESE,
}


def render(lines: list[str]):
    """A white A4 page at 300 dpi with `lines` set at 36 px (about 9 pt)."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.new("L", (2480, 3508), 255)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, 44)
    for i, line in enumerate(lines):
        draw.text((200, 250 + i * 90), line, font=font, fill=0)
    return image


def accuracy(found: str, truth: str) -> float:
    strip = lambda s: re.sub(r"\s+", "", s)  # noqa: E731
    return difflib.SequenceMatcher(None, strip(found), strip(truth), autojunk=False).ratio()


def by_osd(image, pytesseract, languages: str) -> str:
    """Tesseract's script detection: Han pages read with Chinese, the rest with English only."""
    try:
        script = re.search(r"Script: (\w+)", pytesseract.image_to_osd(image)).group(1)
    except pytesseract.TesseractError:  # too little text to tell
        script = "Latin"
    lang = languages if script in ("Han", "HanS", "HanT") else "eng"
    return pytesseract.image_to_string(image, lang=lang)


def by_english_pass(image, pytesseract, languages: str) -> str:
    """Read in English; read again with Chinese when Tesseract is unsure of many words (Chinese read as English)."""
    data = pytesseract.image_to_data(image, lang="eng", output_type=pytesseract.Output.DICT)
    words = [(w, float(c)) for w, c in zip(data["text"], data["conf"]) if w.strip()]
    if words and sum(c < 60 for _, c in words) / len(words) < 0.1:
        return " ".join(w for w, _ in words)  # for timing; the accuracy ignores spaces
    return pytesseract.image_to_string(image, lang=languages)


def scanned_pdf() -> bytes:
    """The four pages as images in a PDF, at 300 dpi on A4: no text layer."""
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    for lines in PAGES.values():
        pdf.add_page()
        pdf.image(render(lines), x=0, y=0, w=210, h=297)
    return bytes(pdf.output())


def pipeline(languages: list[str]) -> int:
    import os
    import tempfile

    from rag.documents import load_document

    figures: dict = {"load_before": os.getloadavg()[0]}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "scan.pdf"
        path.write_bytes(scanned_pdf())
        for lang in languages:
            cache = Path(tmp) / f"cache-{lang}"
            for run in ("first", "cached"):
                started = time.perf_counter()
                load_document(path, "scan.pdf", ocr_languages=lang, cache_dir=cache)
                seconds = time.perf_counter() - started
                figures[f"{lang} {run}"] = {"s": round(seconds, 2), "pages_per_s": round(len(PAGES) / seconds, 3)}
                rows.append(
                    (f"{lang}, {run}", f"{seconds:6.2f} s for {len(PAGES)} pages, {len(PAGES) / seconds:.2f} pages/s")
                )
    figures["load_after"] = os.getloadavg()[0]
    emit("OCR end to end (bench/ocr.py --pipeline)", figures, rows)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--pipeline", action="store_true", help="time a scanned PDF through load_document")
    parser.add_argument("--languages", default="eng+chi_sim+chi_tra,eng", help="for --pipeline, comma-separated")
    args = parser.parse_args()
    if args.pipeline:
        return pipeline(args.languages.split(","))
    import os

    import pytesseract

    def at_once(languages):
        return lambda im: pytesseract.image_to_string(im, lang=languages)

    choices = {
        "eng+chi_sim+chi_tra": at_once("eng+chi_sim+chi_tra"),
        "chi_sim+eng+chi_tra": at_once("chi_sim+eng+chi_tra"),
        "chi_sim+chi_tra+eng": at_once("chi_sim+chi_tra+eng"),
        "chi_sim+eng": at_once("chi_sim+eng"),
        "eng": at_once("eng"),
        "osd, then chi_sim+eng+chi_tra if Han": lambda im: by_osd(im, pytesseract, "chi_sim+eng+chi_tra"),
        "eng pass, then chi_sim+eng+chi_tra if unsure": lambda im: by_english_pass(
            im, pytesseract, "chi_sim+eng+chi_tra"
        ),
    }
    images = {name: render(lines) for name, lines in PAGES.items()}
    figures: dict = {"load_before": os.getloadavg()[0]}
    rows = []
    for choice, read in choices.items():
        for page, image in images.items():
            times, text = [], ""
            for _ in range(args.repeat):
                started = time.perf_counter()
                text = read(image)
                times.append(time.perf_counter() - started)
            seconds = min(times)
            acc = accuracy(clean_ocr_text(text), "\n".join(PAGES[page]))
            figures[f"{choice} | {page}"] = {"s_per_page": round(seconds, 2), "accuracy": round(acc, 3)}
            rows.append((f"{choice} | {page}", f"{seconds:5.2f} s/page  accuracy {acc:.3f}"))
    figures["load_after"] = os.getloadavg()[0]
    emit("OCR language choice (bench/ocr.py)", figures, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
