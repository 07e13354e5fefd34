"""Quality of ways to run the embedding model once per build instead of twice, on either eval.

Run: python bench/build_variants.py --eval bundled|xquad [--variants shipped,mean,pooled,late]

Builds the eval's index as shipped (chunks and sentences each embedded) in a temporary folder, then
for each variant replaces the stored vectors in memory and runs the eval (rag.evaluate.run_eval):
- shipped: as built;
- mean: a chunk's vector is the mean of its sentences' vectors;
- pooled: the same mean weighted by sentence length, which `--chunk-vectors pooled` builds;
- late: late chunking, each sentence's vector mean-pooled from its chunk's token embeddings
  (one encoder pass per chunk, the `passage: ` prompt included, the first chunk holding it).
Prints answer accuracy, first-quote accuracy, evidence hit@1 and abstention recall per variant.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit  # noqa: E402

from rag.assistant import Assistant  # noqa: E402
from rag.chunking import int_id  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.documents import normalize  # noqa: E402
from rag.evaluate import run_eval  # noqa: E402
from rag.indexing import Index  # noqa: E402
from rag.store import VectorStore  # noqa: E402

EVALS = {
    "bundled": (ROOT / "corpus", [ROOT / "eval" / "qa.jsonl"]),
    "xquad": (
        ROOT / "eval" / "xquad" / "corpus",
        [ROOT / "eval" / "xquad" / "questions.jsonl", ROOT / "eval" / "xquad" / "unanswerable.jsonl"],
    ),
}


def store_of(ids: np.ndarray, vectors: np.ndarray) -> VectorStore:
    store = VectorStore(vectors.shape[1])
    store.add(ids, vectors.astype(np.float32))
    return store


def pooled_chunks(index: Index, weighted: bool) -> VectorStore:
    vectors = []
    for chunk in index.chunks:
        sentences = index.sentence_vectors.get(np.array(index.sentence_keys(chunk), dtype=np.int64))
        weights = np.array([s.end - s.start if weighted else 1 for s in chunk.sentences], dtype=np.float32)
        v = weights @ sentences
        vectors.append(v / np.linalg.norm(v))
    return store_of(np.array([int_id(c.chunk_id) for c in index.chunks], dtype=np.int64), np.stack(vectors))


def late_chunked_sentences(index: Index, assistant: Assistant) -> VectorStore:
    import torch

    model = assistant.embedder.passage_embedder._model  # the sentence-transformers model
    tokenizer, bert, prompt = model.tokenizer, model[0].auto_model, "passage: "
    pooled: dict[int, np.ndarray] = {}
    for chunk in index.chunks:
        text = prompt + chunk.search_text
        encoded = tokenizer(text, return_offsets_mapping=True, truncation=True, max_length=512, return_tensors="pt")
        offsets = encoded.pop("offset_mapping")[0].numpy()
        with torch.no_grad():
            tokens = bert(**encoded).last_hidden_state[0].numpy()
        at = len(prompt)
        for key, s in zip(index.sentence_keys(chunk), chunk.sentences):
            sentence = normalize(chunk.text[s.start - chunk.start : s.end - chunk.start])
            start = text.find(sentence, at)
            if key in pooled or start < 0:
                continue
            at = end = start + len(sentence)
            inside = [i for i, (a, b) in enumerate(offsets) if b > a and a >= start and b <= end]
            if inside:
                v = tokens[inside].mean(0)
                pooled[key] = v / np.linalg.norm(v)
    ids = index.sentence_vectors.ids()
    old = index.sentence_vectors.get(ids)
    return store_of(ids, np.stack([pooled.get(int(i), v) for i, v in zip(ids, old)]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval", choices=sorted(EVALS), default="bundled")
    parser.add_argument("--variants", default="shipped,mean,pooled,late")
    args = parser.parse_args()
    corpus, qa_paths = EVALS[args.eval]
    settings = Settings.from_env(corpus_dir=corpus, index_dir=Path(tempfile.mkdtemp(prefix="variants-")) / "index")
    assistant = Assistant(settings)
    assistant.ensure_index()
    built = assistant.index
    figures, rows = {}, []
    for variant in args.variants.split(","):
        index = Index(
            built.manifest,
            built.chunks,
            built.terms,
            built.chunk_vectors,
            built.sentence_vectors,
            built.bm25,
            built.path,
        )
        if variant in ("mean", "pooled"):
            index.chunk_vectors = pooled_chunks(built, weighted=variant == "pooled")
        elif variant == "late":
            index.sentence_vectors = late_chunked_sentences(built, assistant)
        assistant._index = index
        report = run_eval(assistant, qa_paths)
        figures[variant] = {
            "answer_accuracy": report["answer_accuracy"],
            "first_quote_accuracy": report["first_quote_accuracy"],
            "evidence_hit@1": report["retrieval"]["evidence"]["hit@1"],
            "abstention_recall": report["abstention"]["recall"],
        }
        rows.append((variant, "  ".join(f"{k} {v}" for k, v in figures[variant].items())))
    emit(f"build-variants-{args.eval}", figures, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
