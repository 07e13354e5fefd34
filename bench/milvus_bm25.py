"""Milvus's full-text BM25 (jieba analyzer) beside rag.lexical's BM25, lexical retrieval alone.

Run: python bench/milvus_bm25.py --index-dir DIR --qa eval/qa.jsonl [more.jsonl ...] [--uri ./milvus.db]

Both rank the chunks of a built index for each eval question: ours is `index.bm25.top` over the
question's terms (rag.lexical.tokenize: jieba for Chinese, lowercase words and numbers for
English, stopwords dropped), Milvus's a BM25 function over the chunks' search text with
`analyzer_params={"tokenizer": "jieba"}` (jieba's search mode, lowercased). Printed: document
hit@1/@5 and MRR@10 against the questions' gold documents (answerable questions only), and p50
query latency. This is the lexical list only: the full pipeline adds translations and a coverage
gate around it (rag.retrieval), which a Milvus BM25 side would need to reproduce.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit, summarize  # noqa: E402

from rag.documents import normalize  # noqa: E402
from rag.indexing import load_index  # noqa: E402
from rag.lexical import tokenize  # noqa: E402
from rag.milvus import client  # noqa: E402

K = 10


def milvus_bm25(uri: str, texts: list[str]):
    from pymilvus import DataType, Function, FunctionType

    milvus = client(uri)
    name = "bench_bm25"
    if milvus.has_collection(name):
        milvus.drop_collection(name)
    schema = milvus.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field(
        "text", DataType.VARCHAR, max_length=65535, enable_analyzer=True, analyzer_params={"tokenizer": "jieba"}
    )
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    schema.add_function(
        Function(
            name="bm25", function_type=FunctionType.BM25, input_field_names=["text"], output_field_names=["sparse"]
        )
    )
    params = milvus.prepare_index_params()
    params.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    milvus.create_collection(name, schema=schema, index_params=params, consistency_level="Strong")
    milvus.insert(name, [{"id": row, "text": text} for row, text in enumerate(texts)])
    milvus.flush(name)

    def search(question: str) -> list[int]:
        hits = milvus.search(name, data=[question], anns_field="sparse", limit=K, search_params={"metric_type": "BM25"})
        return [int(hit["id"]) for hit in hits[0]]

    return search


def score(rankings: list[list[str]], gold: list[set[str]]) -> dict:
    hit1 = sum(bool(r[:1]) and r[0] in g for r, g in zip(rankings, gold)) / len(gold)
    hit5 = sum(bool(set(r[:5]) & g) for r, g in zip(rankings, gold)) / len(gold)
    mrr = sum(next((1 / (i + 1) for i, d in enumerate(r) if d in g), 0.0) for r, g in zip(rankings, gold)) / len(gold)
    return {"doc_hit@1": round(hit1, 4), "doc_hit@5": round(hit5, 4), "mrr@10": round(mrr, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--qa", type=Path, nargs="+", required=True)
    parser.add_argument("--uri", default=None, help="Milvus URI (default: a new Milvus Lite folder in tmp)")
    args = parser.parse_args()
    uri = args.uri or str(Path(tempfile.mkdtemp()) / "bm25.db")

    index = load_index(args.index_dir)
    questions = [json.loads(line) for path in args.qa for line in path.open(encoding="utf-8") if line.strip()]
    questions = [q for q in questions if q.get("doc_ids")]
    gold = [set(q["doc_ids"]) for q in questions]
    started = time.perf_counter()
    search = milvus_bm25(uri, [c.search_text for c in index.chunks])
    build_s = time.perf_counter() - started

    figures: dict = {"index_dir": str(args.index_dir), "chunks": len(index.chunks), "questions": len(questions)}
    rows = []
    for name in ("rag", "milvus"):
        rankings, times = [], []
        for q in questions:
            started = time.perf_counter()
            if name == "rag":
                found = index.bm25.top(tokenize(normalize(q["question"])), K)[0].tolist()
            else:
                found = search(normalize(q["question"]))
            times.append((time.perf_counter() - started) * 1000)
            docs = []
            for row in found:
                if index.chunks[row].doc_id not in docs:
                    docs.append(index.chunks[row].doc_id)
            rankings.append(docs)
        figures[name] = {**score(rankings, gold), "search_ms": summarize(times)}
        f = figures[name]
        rows.append(
            (
                name,
                f"doc hit@1 {f['doc_hit@1']}, hit@5 {f['doc_hit@5']}, MRR@10 {f['mrr@10']}, "
                f"p50 {f['search_ms']['p50']} ms",
            )
        )
    figures["milvus_build_s"] = round(build_s, 2)
    emit("BM25: rag.lexical vs Milvus full-text (jieba)", figures, rows)
    if args.uri is None:
        shutil.rmtree(Path(uri).parent, ignore_errors=True)


if __name__ == "__main__":
    main()
