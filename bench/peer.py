"""rag beside its peer, LlamaIndex, on the same corpus, questions, embedder and machine.

Run: pip install -e ".[bench]" && python bench/peer.py [--eval bundled|xquad|both] [--rounds 3]

The peer is configured as a capable user would: the same multilingual-e5-small model with its
`query: `/`passage: ` prompts, plus `BM25Retriever` over jieba-segmented text, fused by
`QueryFusionRetriever` (reciprocal rerank), top 5. Four configurations:
- "same embedder": rag's own embedder wrapped as a LlamaIndex embedding (passages in float32, as
  LlamaIndex runs them; questions through rag's numpy encoder, so both systems embed a question
  identically and only the pipelines differ), with LlamaIndex's default chunks (SentenceSplitter,
  1,024 tokens); the same with 256-token chunks; and the same with rag's bfloat16 passages, to
  show what that alone is worth to a build;
- "its HuggingFaceEmbedding": the converted model through LlamaIndex's own HuggingFaceEmbedding
  (sentence-transformers on torch, for questions too): LlamaIndex as it comes.
rag runs as shipped (passage precision "auto": bf16 on a CPU with native bfloat16, else fp32), and
beside it with float32 passages where "auto" is bf16, or with its int8 options (int8 passages, and
those with pooled chunk vectors) where it is fp32; the bf16 peer runs only where bf16 is native
(`configurations`). Each rag run starts with the judge's per-sentence caches empty, so no
configuration inherits the sentences another one analysed.

Measured, for each system:
- build: seconds from the documents to a ready retriever; rag's index is written to disk, the
  peer's is in memory (best of the rounds);
- retrieve p50/p95 (ms): the 5 passages shown for a question; rag's includes its answer judge,
  which orders the passages. Two passes over the questions after a short warm-up: the first pass
  (each question's sentences met for the first time, unless an earlier question met them) and the
  warm pass (the issue's "warm": the judge's per-sentence caches hold what the first pass read,
  as in a server that has answered for a while; each question's own USE vector is forgotten
  first, so the question itself is new). rag's whole answer is timed in the first pass;
- evidence hit@1 and hit@5: a passage among the first 1 (5) holds a gold answer string (the rule
  of rag.evaluate), overall and by language direction.

Runs alternate (peer, rag, peer, rag ...) and each timed block waits for a quiet machine (load
average under --quiet-load, up to --quiet-wait seconds; the load seen is printed). Latencies
pool all rounds.
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, percentile  # noqa: E402

from rag.assistant import Assistant  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.documents import load_corpus, normalize  # noqa: E402
from rag.embeddings import load_embedder, native_bf16  # noqa: E402
from rag.evaluate import language_direction, load_qa, normalize_answer  # noqa: E402
from rag.judge import clear_caches as clear_judge_caches  # noqa: E402

EVALS = {
    "bundled": (ROOT / "corpus", [ROOT / "eval" / "qa.jsonl"]),
    "xquad": (ROOT / "eval" / "xquad" / "corpus", [ROOT / "eval" / "xquad" / "questions.jsonl"]),
}
TOP_K = 5
PEER = "LlamaIndex hybrid, same embedder"
PEER_HF = "LlamaIndex hybrid, its HuggingFaceEmbedding"
HF = "huggingface"
# The peer's chunk size in tokens and its embedder: rag's at a passage precision, or HF (the same
# converted model through LlamaIndex's HuggingFaceEmbedding, as LlamaIndex runs it: torch for
# questions too, where rag embeds questions with its numpy encoder).
PEER_CONFIGS = {
    PEER: (1024, "fp32"),
    "LlamaIndex hybrid, 256-token chunks": (256, "fp32"),
    "LlamaIndex hybrid, same embedder, bf16 passages": (1024, "bf16"),
    PEER_HF: (1024, HF),
}
# rag as shipped, and the settings each other row changes.
RAG_CONFIGS = {
    "rag": {},
    "rag, fp32 passages": {"passage_precision": "fp32"},
    "rag, int8 passages": {"passage_precision": "int8"},
    "rag, int8 + pooled chunk vectors": {"passage_precision": "int8", "chunk_vectors": "pooled"},
}


def configurations() -> tuple[dict, dict]:
    """The rows this CPU can tell apart. With native bfloat16, rag as shipped is bf16: float32 is
    the row to compare. Without it, bf16 would be emulated (about 6x slower, no one's choice) and
    "auto" is float32: the int8 options are the rows that show what a build can save here."""
    native = native_bf16()
    peers = {k: v for k, v in PEER_CONFIGS.items() if native or v[1] != "bf16"}
    keep = {"auto", "fp32"} if native else {"auto", "int8"}
    rags = {k: v for k, v in RAG_CONFIGS.items() if v.get("passage_precision", "auto") in keep}
    return peers, rags


def wait_for_quiet(max_load: float, max_wait_s: float) -> float:
    """Wait until the 1-minute load average is under `max_load` (or `max_wait_s` passed); return it."""
    deadline = time.monotonic() + max_wait_s
    while os.getloadavg()[0] >= max_load and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def evidence_rank(texts: list[str], gold: list[str]) -> int | None:
    gold_norm = [normalize_answer(g) for g in gold]
    holds = [any(g in normalize_answer(normalize(t)) for g in gold_norm) for t in texts]
    return next((i + 1 for i, held in enumerate(holds) if held), None)


# --------------------------------------------------------------------------- the peer


def build_peer(documents, embedder, chunk_tokens: int):
    """LlamaIndex's hybrid retriever over `documents`: vectors + BM25 (jieba), reciprocal-rank fused.

    `embedder` is rag's (wrapped) or a LlamaIndex embedding model (used as it is)."""
    import jieba
    from llama_index.core import Document as LIDocument
    from llama_index.core import VectorStoreIndex
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.llms import MockLLM
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.core.retrievers import BaseRetriever, QueryFusionRetriever
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from llama_index.retrievers.bm25 import BM25Retriever

    class SameEmbedder(BaseEmbedding):
        """rag's own e5 embedder (query:/passage: prompts), so both systems embed identically."""

        def _get_query_embedding(self, query: str) -> list[float]:
            return embedder.embed_queries([query])[0].tolist()

        async def _aget_query_embedding(self, query: str) -> list[float]:
            return self._get_query_embedding(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            return embedder.embed_passages([text])[0].tolist()

        def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
            return embedder.embed_passages(texts).tolist()

    def segmented(text: str) -> str:
        return " ".join(w for w in jieba.cut(text) if w.strip())

    class JiebaBM25(BaseRetriever):
        """BM25Retriever over jieba-segmented copies of the nodes; returns the original nodes."""

        def __init__(self, nodes: list[TextNode]) -> None:
            super().__init__()
            copies = [TextNode(text=segmented(n.get_content()), id_=n.node_id) for n in nodes]
            self.by_id = {n.node_id: n for n in nodes}
            self.bm25 = BM25Retriever.from_defaults(nodes=copies, similarity_top_k=TOP_K, skip_stemming=True)

        def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
            found = self.bm25.retrieve(segmented(query_bundle.query_str))
            return [NodeWithScore(node=self.by_id[h.node.node_id], score=h.score) for h in found]

    if isinstance(embedder, BaseEmbedding):
        embed_model = embedder
    else:
        embed_model = SameEmbedder(model_name="multilingual-e5-small", embed_batch_size=32)
    splitter = SentenceSplitter(chunk_size=chunk_tokens, chunk_overlap=min(200, chunk_tokens // 5))
    li_docs = [LIDocument(text=d.text, id_=d.doc_id, metadata={"doc_id": d.doc_id}) for d in documents]
    nodes = splitter.get_nodes_from_documents(li_docs)
    vector = VectorStoreIndex(nodes, embed_model=embed_model).as_retriever(similarity_top_k=TOP_K)
    return QueryFusionRetriever(
        [vector, JiebaBM25(nodes)],
        mode="reciprocal_rerank",
        similarity_top_k=TOP_K,
        num_queries=1,  # no LLM query rewriting: both systems answer offline
        use_async=False,
        llm=MockLLM(),  # never called with num_queries=1; without one LlamaIndex looks for OpenAI
    )


def huggingface_embedding(settings: Settings):
    """The converted model through LlamaIndex's own HuggingFaceEmbedding (sentence-transformers on
    torch, float32), with e5's prompts: how a LlamaIndex user runs it. Loaded and warmed here, so
    no build time includes the load."""
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding

    from rag.bundled_model import bundled_model_dir

    model = HuggingFaceEmbedding(
        model_name=str(bundled_model_dir(settings.cache_dir)),
        query_instruction="query: ",
        text_instruction="passage: ",
        device="cpu",
        embed_batch_size=32,
    )
    model.get_text_embedding_batch(["warm-up"])
    model.get_query_embedding("warm-up")
    return model


# --------------------------------------------------------------------------- one run


def run_peer(name, chunk_tokens, documents, embedder, rows) -> dict:
    started = time.perf_counter()
    retriever = build_peer(documents, embedder, chunk_tokens)
    build_s = time.perf_counter() - started
    for row in rows[:20]:  # warm-up
        retriever.retrieve(row["question"])
    ranks, first, warm = [], [], []
    for row in rows:
        t0 = time.perf_counter()
        hits = retriever.retrieve(row["question"])
        first.append((time.perf_counter() - t0) * 1000)
        ranks.append(evidence_rank([h.node.get_content() for h in hits], row["answers"]))
    for row in rows:
        t0 = time.perf_counter()
        retriever.retrieve(row["question"])
        warm.append((time.perf_counter() - t0) * 1000)
    return {"build_s": build_s, "ranks": ranks, "retrieve_ms": warm, "first_pass_ms": first}


def run_rag(settings: Settings, embedder, rows) -> dict:
    shutil.rmtree(settings.index_dir, ignore_errors=True)
    clear_judge_caches()
    assistant = Assistant(settings, embedder)
    if assistant.judge is not None:
        assistant.judge.clear_cache()
    started = time.perf_counter()
    assistant.refresh(rebuild=True)
    build_s = time.perf_counter() - started
    for row in rows[:20]:
        assistant.ask(row["question"])
    ranks, first, warm, answer_ms, correct, queries = [], [], [], [], [], []
    for row in rows:
        t0 = time.perf_counter()
        retrieval = assistant.retrieve(row["question"])
        first.append((time.perf_counter() - t0) * 1000)
        queries.append(retrieval.query)
        ranks.append(evidence_rank([h.chunk.text for h in retrieval.hits], row["answers"]))
        t0 = time.perf_counter()
        answer = assistant.ask(row["question"])
        answer_ms.append((time.perf_counter() - t0) * 1000)
        text = normalize_answer(answer.answer)
        correct.append(not answer.abstained and any(normalize_answer(g) in text for g in row["answers"]))
    for row, query in zip(rows, queries):
        if assistant.judge is not None:
            assistant.judge.forget([row["question"], query])
        t0 = time.perf_counter()
        assistant.retrieve(row["question"])
        warm.append((time.perf_counter() - t0) * 1000)
    return {
        "build_s": build_s,
        "ranks": ranks,
        "retrieve_ms": warm,
        "first_pass_ms": first,
        "answer_ms": answer_ms,
        "correct": correct,
    }


def hit_rates(ranks: list[int | None], rows: list[dict]) -> dict:
    def rate(selected: list[int | None], k: int) -> float:
        return round(sum(1 for r in selected if r is not None and r <= k) / max(1, len(selected)), 3)

    out = {"hit@1": rate(ranks, 1), "hit@5": rate(ranks, 5)}
    directions = sorted({language_direction(r["tags"]) for r in rows} - {None})
    for direction in directions:
        selected = [rank for rank, row in zip(ranks, rows) if language_direction(row["tags"]) == direction]
        out[direction] = {"n": len(selected), "hit@1": rate(selected, 1), "hit@5": rate(selected, 5)}
    return out


def bench_eval(name: str, rounds: int, quiet_load: float, quiet_wait: float, cache_dir: Path) -> dict:
    corpus, qa_paths = EVALS[name]
    rows = [r for path in qa_paths for r in load_qa(path) if r["answers"]]
    documents, _ = load_corpus(corpus)
    work = Path(tempfile.mkdtemp(prefix=f"peer-{name}-"))
    settings = Settings.from_env(corpus_dir=corpus, index_dir=work / "index", cache_dir=cache_dir)
    peer_configs, rag_configs = configurations()
    precisions = {"auto", *(p for _, p in peer_configs.values() if p != HF)}
    precisions |= {c.get("passage_precision", "auto") for c in rag_configs.values()}
    embedders = {p: load_embedder(settings.embed_model, cache_dir, p) for p in sorted(precisions)}
    for model in embedders.values():  # the passage model loads on first use: in no system's build time
        model.embed_passages(["warm-up"])
    embedders[HF] = huggingface_embedding(settings)
    runs: dict[str, list[dict]] = {label: [] for label in [*peer_configs, *rag_configs]}
    loads = []
    # Alternating: a peer configuration, then a rag one, until both lists are done.
    peers, rags = [("peer", label) for label in peer_configs], [("rag", label) for label in rag_configs]
    order = [step for pair in itertools.zip_longest(peers, rags) for step in pair if step is not None]
    for _ in range(rounds):
        for system, label in order:
            loads.append(wait_for_quiet(quiet_load, quiet_wait))
            if system == "peer":
                chunk_tokens, precision = peer_configs[label]
                runs[label].append(run_peer(label, chunk_tokens, documents, embedders[precision], rows))
            else:
                changed = settings.with_(**rag_configs[label])
                runs[label].append(run_rag(changed, embedders[changed.passage_precision], rows))
    shutil.rmtree(work, ignore_errors=True)
    table = {}
    for label, results in runs.items():
        retrieve = [t for r in results for t in r["retrieve_ms"]]
        first = [t for r in results for t in r["first_pass_ms"]]
        entry = {
            **hit_rates(results[0]["ranks"], rows),
            "retrieve_p50_ms": round(percentile(retrieve, 0.5), 1),
            "retrieve_p95_ms": round(percentile(retrieve, 0.95), 1),
            "first_pass_p50_ms": round(percentile(first, 0.5), 1),
            "first_pass_p95_ms": round(percentile(first, 0.95), 1),
            "build_s": round(min(r["build_s"] for r in results), 2),
        }
        if "answer_ms" in results[0]:
            answers = [t for r in results for t in r["answer_ms"]]
            entry["answer_p50_ms"] = round(percentile(answers, 0.5), 1)
            entry["answer_p95_ms"] = round(percentile(answers, 0.95), 1)
            entry["answer_accuracy"] = round(sum(results[0]["correct"]) / len(rows), 3)
        table[label] = entry
    return {"questions": len(rows), "documents": len(documents), "load_avg_seen": [round(x, 2) for x in loads], **table}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", choices=["bundled", "xquad", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each system")
    parser.add_argument("--quiet-load", type=float, default=0.5, help="wait for a 1-min load average below this")
    parser.add_argument("--quiet-wait", type=float, default=300, help="give up waiting for quiet after this many s")
    args = parser.parse_args()
    cache_dir = Settings.from_env().cache_dir
    for name in ["bundled", "xquad"] if args.eval == "both" else [args.eval]:
        figures = bench_eval(name, args.rounds, args.quiet_load, args.quiet_wait, cache_dir)
        rows = []
        peer_configs, rag_configs = configurations()
        for label in [*peer_configs, *rag_configs]:
            f = figures[label]
            rows.append(
                (
                    label,
                    f"hit@1 {f['hit@1']:.2f}  hit@5 {f['hit@5']:.2f}  warm retrieve p50 {f['retrieve_p50_ms']} ms  "
                    f"p95 {f['retrieve_p95_ms']} ms  first pass p50 {f['first_pass_p50_ms']} ms  "
                    f"p95 {f['first_pass_p95_ms']} ms  build {f['build_s']} s",
                )
            )
        for peer_label in (PEER, PEER_HF):
            peer = figures[peer_label]
            for label in rag_configs:
                rag = figures[label]
                rows.append(
                    (
                        f"{label} / {peer_label}",
                        f"warm p50 {rag['retrieve_p50_ms'] / peer['retrieve_p50_ms']:.2f}x  "
                        f"p95 {rag['retrieve_p95_ms'] / peer['retrieve_p95_ms']:.2f}x  "
                        f"first pass p50 {rag['first_pass_p50_ms'] / peer['first_pass_p50_ms']:.2f}x  "
                        f"p95 {rag['first_pass_p95_ms'] / peer['first_pass_p95_ms']:.2f}x  "
                        f"build {rag['build_s'] / peer['build_s']:.2f}x  answer accuracy {rag['answer_accuracy']}",
                    )
                )
        emit(f"peer-{name}", figures, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
