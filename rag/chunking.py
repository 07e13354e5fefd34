"""Chunking: sentence-aware windows sized in the embedding model's tokens, with overlap.

Sentences always end at a blank line or a form feed; they end at `。！？；` (no space follows
them in Chinese) and at `.!?;` followed by a space, except after an abbreviation: a full stop
after a short word ("U.S.", "Dr.", "e.g.") ends a sentence only where Blingfire's sentence breaker
ends one too. A single line break is a hard wrap, joined, when its line is about as wide as the
widest of its block and the next line does not start a new item (a bullet, a number, a "label:",
a table row); else it ends the sentence, so lists, headings and table rows written one per line
stay apart. Sentences are packed whole into chunks of at most `max_tokens`; a sentence longer
than that is the only thing ever cut, at a token-count boundary. Trade-offs: the token count of a
chunk is the sum of its sentences' counts, which can differ from the count of the joined text by
a token or two at the seams; a wrapped line is told by its width alone, so a two-line block whose
first line is a long title is taken for one sentence unless the second starts like an item; and
Blingfire only vetoes, since splitting wherever it says moved XQuAD up but the bundled eval down.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from rag.documents import Document, normalize

CountTokens = Callable[[Sequence[str]], list[int]]

# Where a sentence always ends: a blank line or a form feed (converters end PDF pages, slides and
# table rows with them), whatever the lines around it say.
_BLOCK_END = re.compile(r"\n[^\S\n\f]*\n|\f")
# A sentence ends after terminal punctuation (and any closing quotes/brackets) followed by
# whitespace or, for Chinese punctuation, immediately.
_SENTENCE_END = re.compile(r"""(?:[。！？；]|[.!?;](?=\s|$))[”’"'」』）)\]]*""")
# A full stop after a short word ("Dr.", "U.S.", "e.g.", "p.m.") may be an abbreviation's:
# Blingfire decides those.
_MAYBE_ABBREVIATION = re.compile(r"(?:^|[\s(“\"'])(?:[A-Za-z]{1,4}\.)+$")
_ITEM_NUMBER = re.compile(r"\s*\d{1,3}\.")
# A line that starts a new item rather than continuing the line above: a bullet, a heading mark, a
# numbered item ("2." but not "1.2"), a "label:" field, a quote or a table row.
_ITEM_START = re.compile(
    r"[^\S\n]*(?:[-*•·▪◦‣+–—>#|]|\d{1,3}[.)、．](?!\d)|[(（]\d{1,3}[)）]|[A-Za-z][.)]\s|[一二三四五六七八九十]+、"
    r"|[^\s:：]{1,16}[:：])"
)
_TABLE_CELL = re.compile(r"\t|\|")
# Characters two columns wide (CJK, full-width forms): a wrapped Chinese line holds half as many.
_WIDE = re.compile(r"[\u1100-\u115f\u2e80-\ua4cf\uac00-\ud7a3\uf900-\ufaff\ufe30-\ufe4f\uff00-\uff60\uffe0-\uffe6]")
# A line is a hard wrap when it fills at least this share of its block's widest line: wrapped text
# (PDF lines, .txt files filled at 70-80 columns) leaves its lines ragged by a word or two, while a
# heading or list item stops well short of the text below it. Lines of blocks wider than
# MAX_WRAP_COLUMNS are paragraphs written one per line, not wrapped text: never joined.
# Lines narrower than MIN_WRAP_COLUMNS (a short list item, "Shanghai 132") are never taken for wraps.
WRAP_SHARE = 0.7
MIN_WRAP_COLUMNS = 40
MAX_WRAP_COLUMNS = 120


# slots: a large file makes hundreds of thousands of these, and a per-instance __dict__ would
# triple their size (both while indexing and in a loaded index).
@dataclass(frozen=True, slots=True)
class Sentence:
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class Chunk:
    chunk_id: str  # stable: derived from the document id and the chunk's text
    doc_id: str
    start: int  # character offsets into Document.text
    end: int
    text: str  # Document.text[start:end], for display
    sentences: tuple[Sentence, ...]  # offsets into Document.text

    @property
    def search_text(self) -> str:
        return normalize(self.text)


def chunk_id_for(doc_id: str, text: str) -> str:
    return hashlib.sha1(f"{doc_id}\x00{normalize(text)}".encode()).hexdigest()[:20]


def int_id(key: str) -> int:
    """A positive int64 id for FAISS, derived from a string key (60 bits of its sha1)."""
    return int(hashlib.sha1(key.encode()).hexdigest()[:15], 16)


def split_sentences(text: str) -> list[Sentence]:
    """Sentence spans of `text` (offsets into it), trimmed of surrounding whitespace, empty ones dropped."""
    spans: list[Sentence] = []
    pos = 0
    for match in _BLOCK_END.finditer(text):
        spans.extend(_block_sentences(text, pos, match.start()))
        pos = match.end()
    spans.extend(_block_sentences(text, pos, len(text)))
    return spans


def _block_sentences(text: str, start: int, end: int) -> list[Sentence]:
    """Sentences of a block (no blank line inside): its lines grouped into runs, each run split."""
    lines = text[start:end].split("\n")
    if len(lines) == 1:
        return _run_sentences(text, start, end)
    widths = [_columns(line) for line in lines]
    widest = max(widths)
    spans: list[Sentence] = []
    run_start = pos = start
    for i, line in enumerate(lines[:-1]):
        pos += len(line) + 1
        wrapped = (
            widest <= MAX_WRAP_COLUMNS
            and widths[i] >= max(WRAP_SHARE * widest, MIN_WRAP_COLUMNS)
            and not re.match(r"[。！？；]", line.rstrip()[-1:])
            and not _TABLE_CELL.search(line)
            and not line.lstrip().startswith("#")
            and not _ITEM_START.match(lines[i + 1])
            and not _TABLE_CELL.search(lines[i + 1])
        )
        if not wrapped:
            spans.extend(_run_sentences(text, run_start, pos - 1))
            run_start = pos
    spans.extend(_run_sentences(text, run_start, end))
    return spans


def _columns(line: str) -> int:
    return len(line.strip()) + len(_WIDE.findall(line))


def _run_sentences(text: str, start: int, end: int) -> list[Sentence]:
    """Sentences of a run of joined lines: ends at terminal punctuation, but not after an abbreviation."""
    piece = text[start:end]
    cuts = [m.end() for m in _SENTENCE_END.finditer(piece)]
    # Full stops after short words: kept only where Blingfire, which knows abbreviations, ends a
    # sentence too. It is asked only then: the regex alone splits ~3x faster.
    doubtful = {
        cut for cut in cuts if piece[cut - 1] == "." and _MAYBE_ABBREVIATION.search(piece, max(0, cut - 24), cut)
    }
    if doubtful and _blingfire() is not None:
        # Line breaks as spaces: the same length, so the breaker's offsets are offsets into `piece`.
        confirmed = set(_latin_cuts(piece.replace("\n", " ")))
        cuts = [cut for cut in cuts if cut not in doubtful or cut in confirmed]
    # "1. Test the load": an item's number, not a sentence.
    number = _ITEM_NUMBER.match(piece)
    if number and cuts and cuts[0] == number.end():
        cuts = cuts[1:]
    spans: list[Sentence] = []
    pos = 0
    for cut in cuts:
        spans.extend(_trimmed(text, start + pos, start + cut))
        pos = cut
    spans.extend(_trimmed(text, start + pos, end))
    return spans


# The breaker needs ~10 bytes of buffers per byte of text: a file that is one long line is broken
# a window at a time, each window starting again at the last sentence the previous one completed.
_BREAKER_WINDOW = 200_000


def _latin_cuts(flat: str) -> list[int]:
    """Where sentences end inside `flat` (not its own end), by Blingfire, a window at a time."""
    cuts: list[int] = []
    pos = 0
    while len(flat) - pos > _BREAKER_WINDOW:
        ends = _sentence_ends(flat[pos : pos + _BREAKER_WINDOW])
        # The window's last sentence may go on past it: only the ones before it are complete.
        step = ends[-2] if len(ends) > 1 else _BREAKER_WINDOW
        cuts.extend(pos + end for end in ends[:-1] if end <= step)
        cuts.append(pos + step)
        pos += step
    cuts.extend(pos + end for end in _sentence_ends(flat[pos:])[:-1])
    return cuts


def _sentence_ends(piece: str) -> list[int]:
    """Where Blingfire's sentence breaker ends each sentence of `piece`, as character offsets.

    Its C function is called directly: the package's own wrapper maps byte offsets to characters
    in a Python loop over every byte, which made splitting 10x slower than the regex it replaces.
    """
    import ctypes

    data = piece.encode("utf-8")
    size = 2 * len(data) + 1
    out = ctypes.create_string_buffer(size)
    starts, ends = (ctypes.c_int32 * size)(), (ctypes.c_int32 * size)()
    n = _blingfire().TextToSentencesWithOffsets(
        ctypes.c_char_p(data), ctypes.c_int(len(data)), out, starts, ends, ctypes.c_int(size)
    )
    if n < 0 or n > size:  # the breaker failed: the piece stays one sentence
        return [len(piece)]
    last_bytes = np.frombuffer(ends, dtype=np.int32, count=out.value.count(b"\n") + 1)
    if len(data) == len(piece):  # ASCII: a byte is a character
        return (last_bytes + 1).tolist()
    # The character that ends at a byte is the number of characters that start at or before it.
    starts_char = np.cumsum((np.frombuffer(data, dtype=np.uint8) & 0xC0) != 0x80)
    return starts_char[last_bytes].tolist()


@functools.cache
def _blingfire():
    """Blingfire's loaded C library; None where it has no build (it ships x86-64 binaries only:
    on ARM Linux or an Apple Silicon Python every full stop ends a sentence, as before it)."""
    try:
        import blingfire

        return blingfire.blingfire
    except (ImportError, OSError):
        return None


def _trimmed(text: str, start: int, end: int) -> list[Sentence]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return [Sentence(start, end)] if end > start else []


def _cut_long_sentence(text: str, sentence: Sentence, count_tokens: CountTokens, max_tokens: int) -> list[Sentence]:
    """Cut a sentence that alone exceeds `max_tokens` into pieces that fit."""
    pieces: list[Sentence] = []
    start = sentence.start
    while start < sentence.end:
        lo, hi = start + 1, sentence.end
        if count_tokens([text[start:hi]])[0] <= max_tokens:
            pieces.extend(_trimmed(text, start, hi))
            break
        while lo < hi:  # largest end whose piece fits
            mid = (lo + hi + 1) // 2
            if count_tokens([text[start:mid]])[0] <= max_tokens:
                lo = mid
            else:
                hi = mid - 1
        end = lo
        # Prefer to cut at a space so an English word is not split in two.
        space = text.rfind(" ", start + 1, end)
        if space > start + (end - start) // 2:
            end = space
        pieces.extend(_trimmed(text, start, end))
        start = end
    return pieces


def chunk_document(doc: Document, count_tokens: CountTokens, max_tokens: int = 160, overlap: int = 32) -> list[Chunk]:
    """Pack the document's sentences into overlapping chunks of at most `max_tokens` tokens."""
    if overlap >= max_tokens:
        raise ValueError(f"overlap ({overlap}) must be smaller than max_tokens ({max_tokens})")
    text = doc.text
    raw = split_sentences(text)
    counts: list[int] = []
    for i in range(0, len(raw), 1024):  # in batches: the texts of all sentences are a second copy of a large file
        counts.extend(count_tokens([text[s.start : s.end] for s in raw[i : i + 1024]]))
    sentences: list[Sentence] = []
    tokens: list[int] = []
    for sentence, n in zip(raw, counts):
        if n <= max_tokens:
            sentences.append(sentence)
            tokens.append(n)
            continue
        pieces = _cut_long_sentence(text, sentence, count_tokens, max_tokens)
        sentences.extend(pieces)
        tokens.extend(count_tokens([text[p.start : p.end] for p in pieces]))

    chunks: list[Chunk] = []
    i = 0
    while i < len(sentences):
        j, total = i, 0
        while j < len(sentences) and (j == i or total + tokens[j] <= max_tokens):
            total += tokens[j]
            j += 1
        chunks.append(_make_chunk(doc, sentences[i:j]))
        if j >= len(sentences):
            break
        # Start the next chunk with as many trailing sentences as fit in the overlap budget while
        # leaving room for the next new sentence (else that chunk would only repeat this one),
        # always advancing by at least one sentence.
        back, carried = j, 0
        while back - 1 > i and carried + tokens[back - 1] <= min(overlap, max_tokens - tokens[j]):
            back -= 1
            carried += tokens[back]
        i = back
    return _unique_ids(chunks)


def _unique_ids(chunks: list[Chunk]) -> list[Chunk]:
    """A document that repeats a passage word for word still gets one id per chunk."""
    seen: dict[str, int] = {}
    unique = []
    for chunk in chunks:
        n = seen.get(chunk.chunk_id, 0)
        seen[chunk.chunk_id] = n + 1
        if n:
            chunk = replace(chunk, chunk_id=chunk_id_for(chunk.doc_id, f"{chunk.text}\x00{n}"))
        unique.append(chunk)
    return unique


def _make_chunk(doc: Document, sentences: Sequence[Sentence]) -> Chunk:
    start, end = sentences[0].start, sentences[-1].end
    text = doc.text[start:end]
    return Chunk(
        chunk_id=chunk_id_for(doc.doc_id, text),
        doc_id=doc.doc_id,
        start=start,
        end=end,
        text=text,
        sentences=tuple(sentences),
    )
