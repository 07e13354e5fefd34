"""Building on Ray (rag.ray_build): a local cluster of two 1-CPU workers against one 1-CPU worker.

Run: python bench/ray_build.py [--docs 600]   (needs pip install 'rag[ray]')
Starts a loopback-only Ray cluster of 2 CPUs, makes a synthetic corpus of N documents from the
bundled text (bench/refresh.py's make_corpus), and reads, chunks and embeds it on the cluster with
one worker, then with two (each an actor with the model loaded once, torch/OMP/MKL pinned to one
thread). Prints for each: passages/s over the wall time (start-up included) and over the
processing window (first batch started to last batch finished, model loading excluded), the
speed-up of two workers over one, each worker's own throughput (passages per busy second), the
driver's write of the generation, and a table for 10 and 100 workers extrapolated on paper from
the measured per-worker throughput (not measured). Also the load average before and after, and
the script's own run time, and the CPU share each worker got: on a shared machine two workers
compete with everything else for the same two cores (and Ray runs its workers at nice 15), and a
share well under 1.0 means the speed-up measured the machine's load, not the build.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# One thread per worker process, set before torch or numpy load anywhere (Ray workers inherit it).
for _name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_name] = "1"

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import emit  # noqa: E402
from refresh import make_corpus  # noqa: E402

from rag.config import Settings  # noqa: E402
from rag.embeddings import load_embedder  # noqa: E402
from rag.indexing import refresh_index  # noqa: E402
from rag.ray_build import _import_ray, build_on_cluster, start_local_cluster  # noqa: E402


def run(settings: Settings, embedder, workers: int) -> dict:
    built = build_on_cluster(settings, embedder, workers=workers, rebuild=True, threads=1)
    stats = list(built.workers.values())
    window = max(w.last_end for w in stats) - min(w.first_start for w in stats)
    passages = built.passages
    return {
        "built": built,
        "workers": len(stats),
        "passages": passages,
        "wall_s": round(built.seconds, 2),
        "window_s": round(window, 2),
        "passages_per_s_wall": round(passages / built.seconds, 1),
        "passages_per_s": round(passages / window, 1),
        "per_worker_passages_per_s": [round(w.passages / w.busy_s, 1) for w in stats],
        "per_worker_passages": [w.passages for w in stats],
        # On a shared machine a worker gets less than its CPU: this shows how much it got.
        "per_worker_cpu_share": [round(w.cpu_s / w.busy_s, 2) for w in stats],
        "per_worker_passages_per_cpu_s": [round(w.passages / w.cpu_s, 1) for w in stats],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=600)
    args = parser.parse_args()
    began = time.perf_counter()
    load_before = os.getloadavg()
    ray = _import_ray()
    work = Path(tempfile.mkdtemp(prefix="rag-bench-ray-"))
    ray_tmp = tempfile.mkdtemp(prefix="rbr-", dir="/tmp")  # Ray's socket paths must stay short
    try:
        corpus = work / "corpus"
        corpus.mkdir()
        make_corpus(corpus, args.docs)
        settings = Settings.from_env(corpus_dir=corpus, index_dir=work / "index")
        embedder = load_embedder(settings.embed_model, settings.cache_dir)
        started = time.perf_counter()
        start_local_cluster(num_cpus=2, temp_dir=ray_tmp)
        cluster_start_s = time.perf_counter() - started
        one = run(settings, embedder, 1)
        two = run(settings, embedder, 2)
        started = time.perf_counter()
        report = refresh_index(settings, embedder, prepared=two.pop("built").prepared)
        write_s = time.perf_counter() - started
        one.pop("built")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    speedup = two["passages_per_s"] / one["passages_per_s"]
    speedup_wall = two["passages_per_s_wall"] / one["passages_per_s_wall"]
    # Per worker: passages per CPU-second of the two that ran side by side, i.e. the throughput of
    # a worker with a core of its own; equal to passages per busy second on a quiet machine.
    per_worker = sum(two["per_worker_passages_per_cpu_s"]) / len(two["per_worker_passages_per_cpu_s"])
    efficiency = min(1.0, speedup / 2)  # what the second worker kept of a first one's throughput
    # Derived, not measured: the speed-up had each worker had a full core (CPU time, not wall).
    speedup_per_cpu = sum(two["per_worker_passages_per_cpu_s"]) / one["per_worker_passages_per_cpu_s"][0]
    chunks, sentences = report.embedded_chunks, report.embedded_sentences
    passages_per_chunk = (chunks + sentences) / chunks
    paper = []
    for n in (10, 100):
        linear, scaled = n * per_worker, n * per_worker * efficiency
        paper.append(
            {
                "workers": n,
                "passages_per_s_linear": round(linear),
                "passages_per_s_at_measured_efficiency": round(scaled),
                "hours_per_1m_chunks_linear": round(1_000_000 * passages_per_chunk / linear / 3600, 2),
                "hours_per_1m_chunks_at_measured_efficiency": round(1_000_000 * passages_per_chunk / scaled / 3600, 2),
            }
        )
    load_after = os.getloadavg()
    total_s = time.perf_counter() - began
    figures = {
        "docs": args.docs,
        "chunks": chunks,
        "sentences": sentences,
        "passages_embedded_on_workers": two["passages"],
        "cluster_start_s": round(cluster_start_s, 2),
        "one_worker": one,
        "two_workers": two,
        "speedup": round(speedup, 2),
        "speedup_wall": round(speedup_wall, 2),
        "speedup_derived_from_cpu_time": round(speedup_per_cpu, 2),
        "per_worker_passages_per_s": round(per_worker, 1),
        "two_worker_efficiency": round(efficiency, 3),
        "driver_write_s": round(write_s, 2),
        "extrapolated_on_paper": paper,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "run_s": round(total_s, 1),
    }

    def line(r: dict) -> str:
        return (
            f"{r['passages_per_s']} passages/s ({r['passages']} in {r['window_s']} s processing; "
            f"{r['passages_per_s_wall']}/s over {r['wall_s']} s wall incl. start-up)"
        )

    emit(
        "ray build: 2 workers vs 1 (local cluster, 1 CPU and 1 thread each)",
        figures,
        [
            ("documents / chunks / sentences", f"{args.docs} / {chunks} / {sentences}"),
            ("Ray cluster start (2 CPUs, loopback)", f"{cluster_start_s:.1f} s"),
            ("1 worker", line(one)),
            ("2 workers", line(two)),
            ("speed-up, processing window (target >= 1.8)", f"{speedup:.2f}x"),
            ("speed-up, wall incl. start-up", f"{speedup_wall:.2f}x"),
            ("  derived, had each worker a full core", f"{speedup_per_cpu:.2f}x (from CPU time: not measured)"),
            (
                "per-worker throughput (passages per busy s)",
                f"{one['per_worker_passages_per_s']} alone; {two['per_worker_passages_per_s']} side by side",
            ),
            (
                "CPU share each worker got (CPU s / busy s)",
                f"{one['per_worker_cpu_share']} alone; {two['per_worker_cpu_share']} side by side (1.0 = a core each)",
            ),
            (
                "passages per CPU-second",
                f"{one['per_worker_passages_per_cpu_s']} alone; {two['per_worker_passages_per_cpu_s']} side by side",
            ),
            ("driver: writing the generation", f"{write_s:.1f} s"),
            *(
                (
                    f"ON PAPER, not measured: {p['workers']} workers",
                    f"~{p['passages_per_s_linear']} passages/s linear, ~{p['hours_per_1m_chunks_linear']} h per 1M "
                    f"chunks; at the measured efficiency ({efficiency:.2f}): "
                    f"~{p['passages_per_s_at_measured_efficiency']} passages/s, "
                    f"~{p['hours_per_1m_chunks_at_measured_efficiency']} h",
                )
                for p in paper
            ),
            (
                "  (assumed)",
                f"{per_worker:.1f} passages/s a worker with a core of its own (per CPU-second, side by side), "
                f"{passages_per_chunk:.2f} passages a chunk; the driver's collection and write not included",
            ),
            ("load average before / after (shared machine?)", f"{load_before} / {load_after}"),
            ("this run took", f"{total_s:.0f} s"),
        ],
    )


if __name__ == "__main__":
    main()
