"""What a question's embedding costs: the numpy e5 encoder with its float32 erf against scipy's.

Run: python bench/query_encoder.py [--rounds 1]
Embeds every bundled and XQuAD eval question with rag.query_encoder as shipped (GELU through its
float32 rational erf) and with scipy.special.erf in its place (what it used before), the two
alternating question by question, one BLAS thread. Prints p50/p95 ms of each and how far the
vectors move. Quiet machine advised: the script does not wait for one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy.special import erf as scipy_erf

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, summarize  # noqa: E402

import rag.query_encoder  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.documents import normalize  # noqa: E402
from rag.embeddings import load_embedder  # noqa: E402
from rag.evaluate import load_qa  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    settings = Settings.from_env()
    embedder = load_embedder(settings.embed_model, settings.cache_dir, settings.passage_precision)
    paths = [ROOT / "eval" / "qa.jsonl", ROOT / "eval" / "xquad" / "questions.jsonl"]
    questions = [normalize(row["question"]) for path in paths for row in load_qa(path)]
    variants = {"float32 rational erf (shipped)": rag.query_encoder.erf, "scipy.special.erf": scipy_erf}
    times: dict[str, list[float]] = {name: [] for name in variants}
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in variants}
    for question in questions[:20]:  # warm-up
        embedder.embed_queries([question])
    for round_ in range(args.rounds):
        for question in questions:
            for name, erf in variants.items():
                rag.query_encoder.erf = erf
                started = time.perf_counter()
                vector = embedder.embed_queries([question])[0]
                times[name].append((time.perf_counter() - started) * 1000)
                if round_ == 0:
                    vectors[name].append(vector)
    rag.query_encoder.erf = variants["float32 rational erf (shipped)"]
    shipped, scipy = (np.array(v) for v in vectors.values())
    figures = {name: summarize(values) for name, values in times.items()}
    figures["max_abs_difference"] = float(np.abs(shipped - scipy).max())
    figures["min_cosine"] = float((shipped * scipy).sum(axis=1).min())
    figures["questions"] = len(questions)
    rows = [(name, f"p50 {figures[name]['p50']:.2f} ms  p95 {figures[name]['p95']:.2f} ms") for name in variants]
    moved = f"max |difference| {figures['max_abs_difference']:.2e}, min cosine {figures['min_cosine']:.7f}"
    rows.append(("vectors", moved))
    emit("query-encoder", figures, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
