"""Indexing one large text file: time, chunks and peak memory (issue 8: "a 50 MB text file").

Run: python bench/bigfile.py --mb 50
Prints: file size, chunks, sentence vectors, build seconds, peak RSS of the build, and the RSS the
finished index takes when loaded in a fresh process (the floor any build must hold at its end).

The file is numbered sentences of the bundled corpus (English and Chinese) in shuffled lines. Vectors come
from a stand-in embedder (hash-seeded, 384-d like the default model, tokens counted by a regex):
the real model embeds ~10 chunks/s here, which would take hours for 50 MB and would measure the
model, not the indexing. Each phase runs in its own process so one's memory does not hide in
the other's peak.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit  # noqa: E402

MB = 2**20


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_file(path: Path, size: int, seed: int = 7) -> None:
    from rag.chunking import split_sentences
    from rag.documents import load_corpus

    docs, _ = load_corpus(ROOT / "corpus")
    sentences = [d.text[s.start : s.end] for d in docs for s in split_sentences(d.text)]
    rng = random.Random(seed)
    written, n = 0, 0
    with path.open("w", encoding="utf-8") as fh:
        while written < size:
            # Numbered, so that every sentence is distinct, as in real text (vectors are per sentence).
            line = " ".join(f"{n + k}: {s}" for k, s in enumerate(rng.choices(sentences, k=5))) + "\n"
            n += 5
            written += len(line.encode("utf-8"))
            fh.write(line)


class StandInEmbedder:
    """Cheap deterministic unit vectors: what is measured is the indexing around the model."""

    name = "stand-in-384"
    dim = 384

    def __init__(self) -> None:
        import re

        self._token = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[A-Za-z0-9]+|\S")

    def count_tokens(self, texts):
        return [len(self._token.findall(t)) for t in texts]

    def embed_passages(self, texts):
        import zlib

        import numpy as np

        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row] = np.random.default_rng(zlib.crc32(text.encode())).standard_normal(self.dim)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    embed_queries = embed_passages


def child_build(corpus: Path, index_dir: Path) -> dict:
    from rag.config import Settings
    from rag.indexing import refresh_index

    before = rss_mb()
    started = time.perf_counter()
    report = refresh_index(Settings(corpus_dir=corpus, index_dir=index_dir), StandInEmbedder())
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "rss_before_mb": round(before, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "skipped": [f"{e.doc_id}: {e.reason}" for e in report.skipped],
        "embedded_chunks": report.embedded_chunks,
        "embedded_sentences": report.embedded_sentences,
    }


def child_load(index_dir: Path) -> dict:
    from rag.indexing import load_index

    before = rss_mb()
    index = load_index(index_dir)
    return {
        "chunks": len(index.chunks),
        "sentences": len(index.sentence_vectors),
        "loaded_rss_mb": round(rss_mb(), 1),
        "load_rss_added_mb": round(rss_mb() - before, 1),
    }


def run_child(*args: str) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=None, text=True, check=True
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=50, help="size of the text file in MiB (default 50)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *paths = args.child
        result = child_build(Path(paths[0]), Path(paths[1])) if kind == "build" else child_load(Path(paths[0]))
        print(json.dumps(result))
        return

    work = Path(tempfile.mkdtemp(prefix="rag-bench-bigfile-"))
    try:
        corpus, index_dir = work / "corpus", work / "index"
        corpus.mkdir()
        big = corpus / "big.txt"
        make_file(big, int(args.mb * MB))
        size = big.stat().st_size
        build = run_child("--child", "build", str(corpus), str(index_dir))
        load = run_child("--child", "load", str(index_dir))
        on_disk = sum(p.stat().st_size for p in index_dir.rglob("*") if p.is_file())
    finally:
        shutil.rmtree(work, ignore_errors=True)

    build_added = build["peak_rss_mb"] - build["rss_before_mb"]
    figures = {
        "file_mb": round(size / MB, 1),
        **build,
        **load,
        "index_on_disk_mb": round(on_disk / MB, 1),
        "peak_over_loaded_index": round(build["peak_rss_mb"] / load["loaded_rss_mb"], 2),
    }
    emit(
        "large document",
        figures,
        [
            ("file size", f"{size / MB:.1f} MB"),
            ("chunks / sentence vectors", f"{load['chunks']} / {load['sentences']}"),
            ("build time", f"{build['seconds']:.1f} s"),
            ("peak RSS of the build", f"{build['peak_rss_mb']:.0f} MB ({build_added:+.0f} MB over the start)"),
            ("RSS of the index loaded afresh", f"{load['loaded_rss_mb']:.0f} MB"),
            ("build peak / loaded index", f"{figures['peak_over_loaded_index']:.2f} x"),
            ("index on disk", f"{on_disk / MB:.0f} MB"),
            ("skipped", ", ".join(build["skipped"]) or "none"),
        ],
    )


if __name__ == "__main__":
    main()
