"""Index build and refresh cost on a synthetic corpus of N documents made from the bundled text.

Run: python bench/refresh.py [--docs 1000]
Prints: full build time and chunks/s, raw encoding time of the same texts, the build overhead
over raw encoding, and the time to refresh after editing one document (and its ratio to the
full build).
"""

from __future__ import annotations

import argparse
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit  # noqa: E402

from rag.chunking import split_sentences  # noqa: E402
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

        started = time.perf_counter()
        full = refresh_index(settings, embedder)
        full_s = time.perf_counter() - started

        index = load_index(index_dir, embedder)
        chunk_texts = [c.search_text for c in index.chunks]
        # Exactly what the build embeds: one vector per (document, sentence) key, so a sentence
        # that several documents share is embedded once per document (rag.indexing.sentence_key).
        sentence_texts = list(
            {
                key: normalize(c.text[s.start - c.start : s.end - c.start])
                for c in index.chunks
                for key, s in zip(Index.sentence_keys(c), c.sentences)
            }.values()
        )
        started = time.perf_counter()
        embedder.embed_passages(chunk_texts)
        chunks_s = time.perf_counter() - started
        started = time.perf_counter()
        embedder.embed_passages(sentence_texts)
        sentences_s = time.perf_counter() - started

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
        "build_overhead_vs_raw_encoding": round(full_s / raw_s - 1, 4),
        "refresh_one_edit_s": round(one_s, 3),
        "refresh_one_edit_ratio": round(one_s / full_s, 4),
        "refresh_one_edit_embedded": [one.embedded_chunks, one.embedded_sentences],
        "refresh_noop_s": round(noop_s, 3),
        "full_embedded": [full.embedded_chunks, full.embedded_sentences],
    }
    emit(
        "index build and refresh",
        figures,
        [
            ("documents / chunks / sentences", f"{args.docs} / {len(chunk_texts)} / {len(sentence_texts)}"),
            ("full build", f"{full_s:.1f} s ({len(chunk_texts) / full_s:.1f} chunks/s)"),
            ("raw encoding (chunks + sentences)", f"{chunks_s:.1f} s + {sentences_s:.1f} s"),
            ("build overhead over raw encoding", f"{100 * (full_s / raw_s - 1):.1f} %"),
            ("refresh after editing 1 document", f"{one_s:.2f} s = {100 * one_s / full_s:.2f} % of full build"),
            ("  re-embedded (chunks, sentences)", f"{one.embedded_chunks}, {one.embedded_sentences}"),
            ("refresh with nothing changed", f"{noop_s:.2f} s"),
        ],
    )


if __name__ == "__main__":
    main()
