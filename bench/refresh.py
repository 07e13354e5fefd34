"""Index build and refresh cost on a synthetic corpus of N documents made from the bundled text.

Run: python bench/refresh.py [--docs 1000]
Prints: full build time and chunks/s, raw encoding time of the same texts (timed before and after
the build, averaged), the build overhead
over raw encoding, and the time to refresh after editing one document (and its ratio to the
full build). The full build's time is also split by stage (`build_stages_s`), measured by timing
the functions rag.indexing calls; stages nest (token counting is inside chunking, embedding
inside the vector stores, the BM25 postings inside writing segments), so they do not add up.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit  # noqa: E402

import rag.indexing  # noqa: E402
from rag.chunking import chunk_document, split_sentences  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.documents import load_corpus, normalize  # noqa: E402
from rag.embeddings import load_embedder  # noqa: E402
from rag.indexing import Index, load_index, refresh_index  # noqa: E402


def make_corpus(folder: Path, n_docs: int, seed: int = 7) -> None:
    docs, _ = load_corpus(ROOT / "corpus")
    sentences = [d.text[s.start : s.end] for d in docs for s in split_sentences(d.text) if s.end - s.start > 20]
    rng = random.Random(seed)
    for i in range(n_docs):
        body = " ".join(rng.sample(sentences, 4))
        (folder / f"doc{i:05d}.txt").write_text(f"Synthetic document {i}\n{body}\n", encoding="utf-8")


@contextlib.contextmanager
def stage_timer(embedder):
    """Seconds spent in each function of a build, by wrapping them for the duration."""
    seconds: Counter[str] = Counter()
    wrapped = [
        (embedder, "embed_passages", "embedding (model)"),
        (embedder, "count_tokens", "token counting (tokenizer)"),
        (rag.indexing, "load_corpus", "reading the corpus"),
        (rag.indexing, "chunk_document", "chunking (incl. token counting)"),
        (rag.indexing, "document_terms", "search terms (jieba, pinyin, names)"),
        (rag.indexing, "_carry_vectors", "vector stores (incl. embedding)"),
        (rag.indexing, "_write_segment", "writing segments (incl. BM25 postings)"),
        (rag.indexing, "_write_generation", "writing the generation's manifest"),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in wrapped]

    def timed(function, stage):
        @functools.wraps(function)
        def run(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[stage] += time.perf_counter() - started

        return run

    for (owner, name, stage), (_, _, function) in zip(wrapped, originals):
        setattr(owner, name, timed(function, stage))
    try:
        yield seconds
    finally:
        for owner, name, function in originals:
            setattr(owner, name, function)


def chunking(settings: Settings) -> tuple[int, int]:
    return settings.chunk_tokens, settings.chunk_overlap


def texts_to_embed(chunks: list) -> tuple[list[str], list[str]]:
    """Exactly what a build embeds: every chunk, and one vector per (document, sentence) key, so a
    sentence that several documents share is embedded once per document (rag.indexing.sentence_key)."""
    chunk_texts = [c.search_text for c in chunks]
    sentences = {
        key: normalize(c.text[s.start - c.start : s.end - c.start])
        for c in chunks
        for key, s in zip(Index.sentence_keys(c), c.sentences)
    }
    return chunk_texts, list(sentences.values())


def time_raw_encoding(embedder, chunk_texts: list[str], sentence_texts: list[str]) -> tuple[float, float]:
    """Seconds to encode the chunks, then the sentences, each in one call (the model sorts them)."""
    seconds = []
    for texts in (chunk_texts, sentence_texts):
        started = time.perf_counter()
        embedder.embed_passages(texts)
        seconds.append(time.perf_counter() - started)
    return seconds[0], seconds[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--docs", type=int, default=1000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rag-bench-refresh-"))
    try:
        corpus, index_dir = work / "corpus", work / "index"
        corpus.mkdir()
        make_corpus(corpus, args.docs)
        settings = Settings.from_env(corpus_dir=corpus, index_dir=index_dir)
        embedder = load_embedder(settings.embed_model, settings.cache_dir)
        embedder.embed_passages(["warm up"])

        # The raw encoding is timed before and after the build and averaged: on a shared machine
        # the load drifts over minutes, and one side timed later than the other skews the ratio.
        documents, _ = load_corpus(corpus)
        chunks = [c for d in documents for c in chunk_document(d, embedder.count_tokens, *chunking(settings))]
        chunk_texts, sentence_texts = texts_to_embed(chunks)
        raw_before = time_raw_encoding(embedder, chunk_texts, sentence_texts)

        with stage_timer(embedder) as stages:
            started = time.perf_counter()
            full = refresh_index(settings, embedder)
            full_s = time.perf_counter() - started

        index = load_index(index_dir, embedder)
        # The benchmark must encode exactly what the build embedded.
        assert texts_to_embed(index.chunks) == (chunk_texts, sentence_texts)
        raw_after = time_raw_encoding(embedder, chunk_texts, sentence_texts)
        chunks_s, sentences_s = ((a + b) / 2 for a, b in zip(raw_before, raw_after))

        edited = corpus / f"doc{args.docs // 2:05d}.txt"
        edited.write_text(edited.read_text(encoding="utf-8") + "\nAn added closing sentence.\n", encoding="utf-8")
        started = time.perf_counter()
        one = refresh_index(settings, embedder)
        one_s = time.perf_counter() - started

        started = time.perf_counter()
        refresh_index(settings, embedder)
        noop_s = time.perf_counter() - started
    finally:
        shutil.rmtree(work, ignore_errors=True)

    raw_s = chunks_s + sentences_s
    figures = {
        "docs": args.docs,
        "chunks": len(chunk_texts),
        "sentences": len(sentence_texts),
        "full_build_s": round(full_s, 2),
        "chunks_per_s": round(len(chunk_texts) / full_s, 1),
        "raw_encode_chunks_s": round(chunks_s, 2),
        "raw_encode_sentences_s": round(sentences_s, 2),
        "raw_encode_before_build_s": [round(x, 2) for x in raw_before],
        "raw_encode_after_build_s": [round(x, 2) for x in raw_after],
        "build_overhead_vs_raw_encoding": round(full_s / raw_s - 1, 4),
        "refresh_one_edit_s": round(one_s, 3),
        "refresh_one_edit_ratio": round(one_s / full_s, 4),
        "refresh_one_edit_embedded": [one.embedded_chunks, one.embedded_sentences],
        "refresh_noop_s": round(noop_s, 3),
        "full_embedded": [full.embedded_chunks, full.embedded_sentences],
        "build_stages_s": {stage: round(s, 2) for stage, s in stages.items()},
    }
    emit(
        "index build and refresh",
        figures,
        [
            ("documents / chunks / sentences", f"{args.docs} / {len(chunk_texts)} / {len(sentence_texts)}"),
            ("full build", f"{full_s:.1f} s ({len(chunk_texts) / full_s:.1f} chunks/s)"),
            ("raw encoding (chunks + sentences), mean", f"{chunks_s:.1f} s + {sentences_s:.1f} s"),
            ("  before / after the build", f"{sum(raw_before):.1f} s / {sum(raw_after):.1f} s"),
            ("build overhead over raw encoding", f"{100 * (full_s / raw_s - 1):.1f} %"),
            ("refresh after editing 1 document", f"{one_s:.2f} s = {100 * one_s / full_s:.2f} % of full build"),
            ("  re-embedded (chunks, sentences)", f"{one.embedded_chunks}, {one.embedded_sentences}"),
            ("refresh with nothing changed", f"{noop_s:.2f} s"),
            *((f"  full build: {stage}", f"{s:.2f} s") for stage, s in stages.items()),
        ],
    )


if __name__ == "__main__":
    main()
