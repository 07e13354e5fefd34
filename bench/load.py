"""Load: simulated chat users through `gradio_client` against the running app, then the same while one uploads.

Starts `python app.py` on a free loopback port with its own RAG_HOME, on a collection holding a
copy of the corpus (uploads go into named collections only), waits until it answers, then runs
`--users` concurrent users for `--seconds`, each with its own client (its own session) asking the
eval questions in turn, as a person would click Ask. In the second phase one of the users instead
uploads a new document through the page's upload box (which stores it and refreshes the index),
asks about it, and uploads the next, while the others keep asking. The app's RSS is sampled
throughout. Requests served, errors, latency percentiles and memory are printed as a table and
as JSON. Not a test: figures depend on the machine and on whatever else runs on it.

    RAG_CACHE_DIR=/tmp/rcache python bench/load.py [--users 20] [--seconds 60]
    RAG_CACHE_DIR=/tmp/rcache python bench/load.py --concurrency 4 --max-size 64   (app.py, other queue)

A refused request (e.g. "Queue is full") counts as an error; that user asks again a second later.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, emit, free_port, summarize, wait_until_up  # noqa: E402

COLLECTION = "load"  # uploads go into named collections only
SYLLABLES = ("ka", "lo", "mi", "ru", "te", "vo", "zi", "pa", "ne", "su")

# app.py run unchanged except for its queue settings, to compare them under the same load.
QUEUE_OVERRIDE = """
import json, sys
import gradio
override = json.loads(sys.argv.pop(1))
queue = gradio.Blocks.queue

def patched(self, *args, **kwargs):
    if override["concurrency"]:
        kwargs["default_concurrency_limit"] = override["concurrency"]
    if override["max_size"]:
        kwargs["max_size"] = override["max_size"]
    return queue(self, *args, **kwargs)

gradio.Blocks.queue = patched
import app
sys.exit(app.main(sys.argv[1:]))
"""


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


class Sampler(threading.Thread):
    """The app's RSS every half second, until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.samples, self.stopped = pid, [], threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(0.5):
            self.samples.append(rss_mb(self.pid))


def user(url: str, questions: list[str], offset: int, until: float, out: dict, lock: threading.Lock) -> None:
    """One simulated user: a session of its own, a question as soon as the last one is answered."""
    from gradio_client import Client

    try:
        client = Client(url, verbose=False)
    except Exception as exc:  # counted: a user who cannot even open the page is an error
        with lock:
            out["errors"].append(f"connect: {type(exc).__name__}: {exc}")
        return
    for question in itertools.islice(itertools.cycle(questions), offset, None):
        if time.monotonic() >= until:
            break
        started = time.monotonic()
        try:
            # The API's inputs leave out gr.State: the question, the chat so far, the collection.
            result = client.predict(question, [], COLLECTION, api_name="/respond")
            chat = result[1]
            if not chat or chat[-1]["role"] != "assistant" or chat[-1]["content"] in ("", "…"):
                raise RuntimeError(f"no answer in the reply: {str(result)[:200]}")
        except Exception as exc:
            with lock:
                out["errors"].append(f"{type(exc).__name__}: {str(exc)[:200]}")
            time.sleep(1.0)  # a person reads the message, then asks again
            continue
        with lock:
            out["latencies_s"].append(time.monotonic() - started)


def uploader(url: str, work: Path, until: float, out: dict, lock: threading.Lock) -> None:
    """The user who uploads: a new document through the upload box, then a question about it, until the phase ends."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)
    for n in itertools.count():
        if time.monotonic() >= until:
            break
        # One made-up word per upload ("Kalomi"): two words in either order matched each other's log.
        port = "".join(SYLLABLES[int(d)] for d in f"{n:03d}").capitalize()
        path = work / f"harbour-log-{n}.txt"
        path.write_text(
            f"Harbour log of Port {port}\n"
            + f"The harbour master of Port {port} counted {100 + n} ships at dawn. " * 50,
            encoding="utf-8",
        )
        started = time.monotonic()
        try:
            report = client.predict([handle_file(str(path))], COLLECTION, api_name="/upload")[0]
            if f"✓ {path.name}" not in str(report):
                raise RuntimeError(str(report)[:200])
            out["refresh_s"].append(time.monotonic() - started)
            asked = time.monotonic()
            question = f"How many ships did the harbour master of Port {port} count?"
            chat = client.predict(question, [], COLLECTION, api_name="/respond")[1]
            if f"{100 + n}" not in str(chat[-1]["content"]):
                raise RuntimeError(f"the uploaded document was not used: {str(chat[-1])[:200]}")
            with lock:
                out["latencies_s"].append(time.monotonic() - asked)
        except Exception as exc:
            out["refresh_errors"].append(f"{type(exc).__name__}: {str(exc)[:200]}")
            time.sleep(1.0)


def wait_until_answering(url: str, app: subprocess.Popen, limit_s: float) -> None:
    """The page is served at once on first start; wait until a question gets an answer, not a hint."""
    from gradio_client import Client

    client = Client(url, verbose=False)
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if app.poll() is not None:
            raise RuntimeError(f"the app exited with {app.returncode}")
        result = client.predict("ready?", [], COLLECTION, api_name="/respond")
        if not result[4]:  # no hint (the outputs leave out gr.State): answered
            return
        time.sleep(1.0)
    raise RuntimeError(f"the app did not answer within {limit_s:.0f} s")


def phase(url: str, questions: list[str], users: int, seconds: float, app_pid: int, work: Path | None) -> dict:
    out: dict = {"latencies_s": [], "errors": [], "refresh_s": [], "refresh_errors": []}
    lock = threading.Lock()
    sampler = Sampler(app_pid)
    sampler.start()
    started = time.monotonic()
    until = started + seconds
    askers = users - 1 if work is not None else users  # one of them uploads instead
    threads = [
        threading.Thread(target=user, args=(url, questions, i * 7, until, out, lock), daemon=True)
        for i in range(askers)
    ]
    if work is not None:
        threads.append(threading.Thread(target=uploader, args=(url, work, until, out, lock), daemon=True))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - started
    sampler.stopped.set()
    sampler.join()
    memory = [m for m in sampler.samples if m == m]
    latency = summarize(out["latencies_s"])
    return {
        "users": users,
        "seconds": round(elapsed, 1),
        "served": len(out["latencies_s"]),
        "errors": len(out["errors"]),
        "error_examples": sorted(set(out["errors"]))[:5],
        "throughput_per_s": round(len(out["latencies_s"]) / elapsed, 2),
        "latency_s": {k: latency[k] for k in ("p50", "p95", "mean")}
        | {"max": round(max(out["latencies_s"], default=0), 2)},
        "rss_mb": {"start": round(memory[0]) if memory else None, "peak": round(max(memory)) if memory else None},
        "uploads": len(out["refresh_s"]),
        "refresh_s": [round(s, 1) for s in out["refresh_s"]],
        "refresh_errors": out["refresh_errors"][:5],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--corpus", type=Path, default=ROOT / "corpus", help="copied; the copy is edited")
    parser.add_argument("--qa", type=Path, default=ROOT / "eval" / "qa.jsonl")
    parser.add_argument("--concurrency", type=int, help="override app.py's default_concurrency_limit")
    parser.add_argument("--max-size", type=int, help="override app.py's queue max_size")
    parser.add_argument("--startup-limit", type=float, default=600, help="seconds to wait for the app to answer")
    args = parser.parse_args()

    questions = [json.loads(line)["question"] for line in args.qa.read_text(encoding="utf-8").splitlines() if line]
    work = Path(tempfile.mkdtemp(prefix="rag-load-"))
    home = work / "home"
    corpus = home / "collections" / COLLECTION / "corpus"
    shutil.copytree(args.corpus, corpus)
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    # The default collection is the bundled corpus with its own index here; the users ask the copy.
    env = {**os.environ, "RAG_HOME": str(home), "RAG_COLLECTION": COLLECTION, "RAG_INDEX_DIR": str(work / "index")}
    env.pop("RAG_CORPUS_DIR", None)
    env.pop("RAG_LLM_BASE_URL", None)  # extractive answers: the load is the app's own
    env.pop("RAG_LLM_MODEL", None)
    log = (work / "app.log").open("w")
    command = [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)]
    if args.concurrency or args.max_size:
        command[1:2] = ["-c", QUEUE_OVERRIDE, json.dumps({"concurrency": args.concurrency, "max_size": args.max_size})]
    launched = time.monotonic()
    app = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_until_up(url, app, args.startup_limit)
        served = time.monotonic() - launched
        print(f"page served {served:.1f} s after start", file=sys.stderr)
        wait_until_answering(url, app, args.startup_limit)
        figures_start = {"page_served_s": round(served, 1), "answering_s": round(time.monotonic() - launched, 1)}
        print(f"app up at {url} (pid {app.pid}); {args.users} users for {args.seconds:.0f} s", file=sys.stderr)
        steady = phase(url, questions, args.users, args.seconds, app.pid, None)
        print("steady phase done; now with one user uploading", file=sys.stderr)
        uploads = work / "uploads"
        uploads.mkdir()
        refreshing = phase(url, questions, args.users, args.seconds, app.pid, uploads)
    finally:
        app.send_signal(signal.SIGINT)  # only the app this script started, by its pid
        try:
            app.wait(30)
        except subprocess.TimeoutExpired:
            app.kill()
            app.wait()
        log.close()
    figures = {
        "queue": {"concurrency": args.concurrency or "app.py", "max_size": args.max_size or "app.py"},
        "cpus": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "start": figures_start,
        "steady": steady,
        "refreshing": refreshing,
    }
    rows = []
    for name, result in (("steady", steady), ("one uploading", refreshing)):
        lat = result["latency_s"]
        rows.append(
            (
                name,
                f"served {result['served']} in {result['seconds']} s ({result['throughput_per_s']}/s), "
                f"errors {result['errors']}, p50 {lat['p50']:.2f} s, p95 {lat['p95']:.2f} s, max {lat['max']:.2f} s, "
                f"RSS {result['rss_mb']['start']}->{result['rss_mb']['peak']} MB peak",
            )
        )
    rows.append(("uploads", f"{refreshing['uploads']} stored and indexed, {refreshing['refresh_s']} s each"))
    emit("load", figures, rows)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if steady["errors"] == refreshing["errors"] == 0 and not refreshing["refresh_errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
