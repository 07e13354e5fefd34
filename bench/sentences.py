"""Sentence splitting speed on a large file: the bench/bigfile.py text as written, and hard-wrapped.

Run: python bench/sentences.py --mb 10
Prints: megabytes, sentences and seconds of `split_sentences` alone for the bigfile text (lines of
five numbered sentences of the bundled corpus) and for the same lines wrapped at 72 columns, where
every line break inside a paragraph is a join to decide. Time it against another checkout by
pointing PYTHONPATH at it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bigfile import MB, make_file  # noqa: E402
from common import emit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=10)
    args = parser.parse_args()
    from rag.chunking import split_sentences

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.txt"
        make_file(path, int(args.mb * MB))
        text = path.read_text(encoding="utf-8")
    wrapped = "\n".join(textwrap.fill(line, 72) + "\n" for line in text.splitlines())
    figures, rows = {}, []
    for name, sample in (("as written", text), ("wrapped at 72", wrapped)):
        start = time.perf_counter()
        n = len(split_sentences(sample))
        seconds = time.perf_counter() - start
        size = len(sample.encode("utf-8")) / MB
        figures[name] = {"mb": round(size, 1), "sentences": n, "seconds": round(seconds, 2)}
        rows.append((name, f"{size:.1f} MB, {n} sentences, {seconds:.2f} s ({size / seconds:.1f} MB/s)"))
    emit("sentence splitting", figures, rows)


if __name__ == "__main__":
    main()
