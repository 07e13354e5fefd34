"""OCR: text for scanned PDF pages and images, read by Tesseract."""

from __future__ import annotations

import io
import shutil

from rag.formats import ConversionError, Converted, MissingExtra, TextBuilder

INSTALL_TESSERACT = (
    "Tesseract is not installed: on Debian/Ubuntu, apt install tesseract-ocr tesseract-ocr-eng "
    "tesseract-ocr-chi-sim tesseract-ocr-chi-tra (macOS: brew install tesseract tesseract-lang)"
)
RENDER_SCALE = 300 / 72  # PDF points to 300 dpi pixels: Tesseract's preferred resolution


def _tesseract():
    try:
        import pytesseract
    except ImportError:
        raise MissingExtra("OCR", "ocr") from None
    if shutil.which(pytesseract.pytesseract.tesseract_cmd) is None:
        raise ConversionError(f"a scan with no text layer; {INSTALL_TESSERACT}")
    return pytesseract


def _languages(pytesseract, wanted: str) -> str:
    installed = set(pytesseract.get_languages(config=""))
    chosen = [lang for lang in (wanted or "eng+chi_sim+chi_tra").split("+") if lang in installed]
    if not chosen:
        raise ConversionError(f"none of the OCR languages {wanted!r} is installed ({INSTALL_TESSERACT})")
    return "+".join(chosen)


def ocr_image_text(image, languages: str = "") -> str:
    pytesseract = _tesseract()
    return pytesseract.image_to_string(image, lang=_languages(pytesseract, languages))


def ocr_pdf_pages(pdf, numbers: list[int], languages: str = "") -> dict[int, str]:
    """The OCR text of the given (0-based) pages of an open pypdfium2 document."""
    texts = {}
    for number in numbers:
        image = pdf[number].render(scale=RENDER_SCALE).to_pil()
        texts[number] = ocr_image_text(image, languages)
    return texts


def convert_image(raw: bytes, languages: str = "") -> Converted:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(raw))
        image.load()
    except (UnidentifiedImageError, OSError) as exc:
        raise ConversionError("damaged image (it cannot be decoded)") from exc
    builder = TextBuilder()
    builder.page(1)
    builder.block(ocr_image_text(image, languages))
    return builder.build(ocr_pages=1)
