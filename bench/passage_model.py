"""What the passage model costs a build: float32, bfloat16 or int8, and how texts are batched.

Run: python bench/passage_model.py [--threads 1] [--articles 12]
Embeds XQuAD text two ways: chunk-sized pieces (450 characters) and sentences (rag.chunking's
splitter), with `--passage-precision` fp32, bf16 (emulated in software on a CPU without native
bfloat16, which is why "auto" means fp32 there) and int8, batched as sentence-transformers orders
a call (by characters, 32 a batch; what rag did before) and as rag.embeddings does now (by
tokens, 16 a batch; 8 and 32 for comparison). Prints seconds per configuration and, for bf16
and int8, the cosine of their vectors to float32's. Quiet machine advised: the script does not
wait for one.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit  # noqa: E402

from rag.chunking import split_sentences  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.embeddings import SentenceTransformerEmbedder, native_bf16  # noqa: E402


def texts_of(articles: int) -> dict[str, list[str]]:
    pieces, sentences = [], []
    for path in sorted((ROOT / "eval" / "xquad" / "corpus").glob("*.txt"))[:articles]:
        text = path.read_text(encoding="utf-8")
        pieces += [text[i : i + 450] for i in range(0, len(text), 450)]
        sentences += [text[s.start : s.end] for s in split_sentences(text)]
    return {"chunk-sized pieces": pieces[:200], "sentences": sentences[:400]}


def sentence_transformers_order(embedder: SentenceTransformerEmbedder, texts: list[str], batch: int) -> np.ndarray:
    """What rag did before: one call, sentence-transformers sorting by characters (bf16 under
    autocast, as rag.embeddings runs it)."""
    import contextlib

    import torch

    bf16 = embedder.passage_precision == "bf16"
    with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
        return np.asarray(
            embedder._model.encode(
                texts,
                prompt_name=embedder._passage_prompt,
                batch_size=batch,
                normalize_embeddings=True,
                show_progress_bar=False,
            ),
            dtype=np.float32,
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--articles", type=int, default=12)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    settings = Settings.from_env()
    figures: dict = {"threads": args.threads, "native_bf16": native_bf16()}
    rows = []
    reference: dict[str, np.ndarray] = {}
    for precision in ("fp32", "bf16", "int8"):
        embedder = SentenceTransformerEmbedder(settings.embed_model, settings.cache_dir, precision=precision)
        embedder.embed_passages(["warm-up"])
        for kind, texts in texts_of(args.articles).items():
            for order, batch in (("characters", 32), ("tokens", 8), ("tokens", 16), ("tokens", 32)):
                label = f"{order}, {batch}"
                started = time.perf_counter()
                if order == "characters":
                    vectors = sentence_transformers_order(embedder, texts, batch)
                else:
                    embedder.batch_size = batch
                    vectors = embedder.embed_passages(texts)
                seconds = time.perf_counter() - started
                key = f"{precision} {kind} ({len(texts)}), by {label}"
                figures[key] = {"seconds": round(seconds, 2)}
                note = ""
                if precision == "fp32" and label == "tokens, 16":
                    reference[kind] = vectors
                if precision != "fp32" and label == "tokens, 16":
                    cosine = (vectors * reference[kind]).sum(axis=1)
                    figures[key]["cosine_to_fp32"] = [round(float(cosine.mean()), 4), round(float(cosine.min()), 4)]
                    note = f"  cosine to fp32 mean {cosine.mean():.4f} min {cosine.min():.4f}"
                rows.append((key, f"{seconds:.2f} s{note}"))
    emit("passage-model", figures, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
