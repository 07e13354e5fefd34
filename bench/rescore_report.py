"""Recompute today's metrics (first-quote accuracy, quote precision, by direction) for an older report.json.

Reports written before `quotes` were recorded keep only the answer text; its quotes are the runs
of text before each `[n]` marker. This is how the "before" figures of the answer judge were
measured:

    git worktree add /tmp/before <commit> && cd /tmp/before
    rag eval --qa eval/xquad/questions.jsonl eval/xquad/unanswerable.jsonl ... --out /tmp/report-before
    python bench/rescore_report.py /tmp/report-before/report.json
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rag.evaluate import contains_gold, sliced_metrics, summary_table  # noqa: E402

_QUOTE = re.compile(r"(.+?)\s*\[\d+\]\s*", re.DOTALL)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report", type=Path)
    args = parser.parse_args()
    report = json.loads(args.report.read_text(encoding="utf-8"))
    rows = report["questions"]
    for r in rows:
        if "quotes_with_gold" not in r:
            quotes = [] if r["abstained"] else [m.group(1) for m in _QUOTE.finditer(r["answer"])]
            r["quotes_with_gold"] = [
                bool(r["answerable"]) and contains_gold(q, r["gold_answers"], "any") for q in quotes
            ]
    print(summary_table({"qa_file": report["qa_file"], **sliced_metrics(rows)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
