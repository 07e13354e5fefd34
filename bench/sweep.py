"""Calibration sweep: chunk size, overlap and top-k over the eval, tuned apart from the heldout part.

For each setting the bundled corpus is re-indexed (chunk size and overlap change the chunks),
the eval runs with abstention off, and the abstention threshold is calibrated on the questions
not tagged `heldout` (rag.evaluate.calibrate). The table shows accuracy on both parts at that
threshold plus evidence hit@5, so a setting is chosen on the tune part and checked on the other.

    python bench/sweep.py                                  # the default grid
    python bench/sweep.py --chunk-tokens 128,160 --overlap 32 --top-k 5
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from common import ROOT, emit

from rag import evaluate
from rag.assistant import Assistant
from rag.config import Settings
from rag.embeddings import load_embedder


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunk-tokens", type=_ints, default=[96, 160, 256])
    parser.add_argument("--overlap", type=_ints, default=[32])
    parser.add_argument("--top-k", type=_ints, default=[3, 5, 8])
    parser.add_argument("--qa", type=Path, default=ROOT / "eval" / "qa.jsonl")
    args = parser.parse_args(argv)

    base = Settings.from_env(corpus_dir=ROOT / "corpus")
    embedder = load_embedder(base.embed_model, base.cache_dir)
    rows, figures = [], []
    with tempfile.TemporaryDirectory(prefix="rag-sweep-") as tmp:
        for chunk_tokens in args.chunk_tokens:
            for overlap in args.overlap:
                index_dir = Path(tmp) / f"index-{chunk_tokens}-{overlap}"
                for top_k in args.top_k:
                    settings = base.with_(
                        index_dir=index_dir,
                        chunk_tokens=chunk_tokens,
                        chunk_overlap=overlap,
                        top_k=top_k,
                        abstain_threshold=float("-inf"),
                    )
                    assistant = Assistant(settings, embedder)
                    assistant.ensure_index()
                    report = evaluate.run_eval(assistant, args.qa)
                    chosen = evaluate.calibrate(report["questions"])
                    held = [r for r in report["questions"] if "heldout" in r["tags"]]
                    figure = {
                        "chunk_tokens": chunk_tokens,
                        "overlap": overlap,
                        "top_k": top_k,
                        "chunks": len(assistant.index.chunks),
                        "threshold": chosen["threshold"],
                        "tune_accuracy": chosen["tune_accuracy"],
                        "heldout_accuracy": chosen["heldout_accuracy"],
                        "evidence_hit@5": report["retrieval"]["evidence"]["hit@5"],
                        "heldout_evidence_hit@5": evaluate.metrics(held)["retrieval"]["evidence"]["hit@5"],
                    }
                    figures.append(figure)
                    rows.append(
                        (
                            f"chunk {chunk_tokens:>3} overlap {overlap:>2} top-k {top_k}",
                            f"chunks {figure['chunks']:>3}  threshold {figure['threshold']:.3f}  "
                            f"tune acc {figure['tune_accuracy']:.3f}  heldout acc {figure['heldout_accuracy']:.3f}  "
                            f"evidence hit@5 {figure['evidence_hit@5']:.3f}",
                        )
                    )
                    print(rows[-1][0], rows[-1][1], file=sys.stderr)
    emit("calibration sweep", {"settings": figures}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
