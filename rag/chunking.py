"""Chunking: sentence-aware windows sized in the embedding model's tokens, with overlap.

Sentences end at `.!?` (followed by space) and at `。！？；!?;` (no space needed in Chinese),
and at blank lines. Sentences are packed whole into chunks of at most `max_tokens`; a sentence
longer than that is the only thing ever cut, at a token-count boundary. Trade-off: the token
count of a chunk is the sum of its sentences' counts, which can differ from the count of the
joined text by a token or two at the seams.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from rag.documents import Document, normalize

CountTokens = Callable[[Sequence[str]], list[int]]

# A sentence ends after terminal punctuation (and any closing quotes/brackets) followed by
# whitespace or, for CJK punctuation, immediately; or at a line break.
_SENTENCE_END = re.compile(
    r"""(?:[。！？；]|[.!?;](?=\s|$))[”’"'」』）)\]]*|\n+""",
)


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
    """Sentence spans of `text`, trimmed of surrounding whitespace, empty ones dropped."""
    spans: list[Sentence] = []
    pos = 0
    for match in _SENTENCE_END.finditer(text):
        spans.extend(_trimmed(text, pos, match.end()))
        pos = match.end()
    spans.extend(_trimmed(text, pos, len(text)))
    return spans


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
