"""Crash safety with real processes (issue 8): SIGKILL `rag index` at random moments, run two at once.

`rag index` runs as a subprocess with a tiny, randomly initialised BERT (one layer, 32 dimensions,
built here in tmp) passed as `--model <path>`: it loads in a second instead of the bundled model's
tens of seconds, and exercises the same code path. Half the kills come at a random moment of a
whole run; the other half aim at the short window where files are written: the test watches the
index folder and kills within 0-150 ms of a staging folder (a segment's or a generation's)
appearing. The phases: a full build, a refresh (a new segment and deletion markers), and a merge
(`rag index --optimize` rewriting two segments as one).
"""

from __future__ import annotations

import random
import shutil
import signal
import string
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from rag.config import PROJECT_ROOT
from rag.indexing import current_generation, index_lock, load_index, segment_folders
from rag.lexical import BM25

pytestmark = pytest.mark.slow

TRIALS_PER_PHASE = 20


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sentence-transformers-loadable model folder: a one-layer BERT over a small vocabulary."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("tiny-model")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += list(string.ascii_lowercase + string.digits) + [chr(c) for c in range(0x4E00, 0x4E00 + 300)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(folder)
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def write_corpus(folder: Path, version: int) -> Path:
    """60 small documents; version 2 edits ten, deletes five and adds five."""
    folder.mkdir(parents=True)
    for i in range(60):
        if version == 2 and i < 5:
            continue
        edited = version == 2 and 10 <= i < 20
        lines = [f"Report {i}{' (revised)' if edited else ''}"]
        lines += [f"Item {i}-{j}: the delta port {j} handled {i * j} tonnes of cargo in week {j}." for j in range(30)]
        lines += [f"长三角第{i}号报告，第{j}项成果。" for j in range(10)]
        (folder / f"doc-{i:02d}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    for i in range(60, 65) if version == 2 else ():
        (folder / f"doc-{i:02d}.txt").write_text(f"New report {i}\nThe keeper lit lamp {i}.\n", encoding="utf-8")
    return folder


def rag_index(corpus: Path, index_dir: Path, model: Path, *extra: str) -> list[str]:
    # No grace period: a replaced generation left behind would read as debris of a killed run.
    return [sys.executable, "-m", "rag.cli", "index", "--corpus", str(corpus), "--index-dir", str(index_dir)] + [
        "--model",
        str(model),
        "--generation-grace-seconds",
        "0",
        *extra,
    ]


def run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, cwd=PROJECT_ROOT)


def fingerprint(index_dir: Path) -> tuple:
    index = load_index(index_dir)  # checksums verified; the model is not needed to compare
    # The saved BM25 postings must belong to the same generation as the terms they were built from
    # (column numbers are the segments' own, so the vocabularies compare as sets).
    fresh = BM25(index.terms)
    assert set(index.bm25.vocabulary) == set(fresh.vocabulary)
    assert all(np.array_equal(index.bm25.scores([t]), fresh.scores([t])) for t in list(fresh.vocabulary)[:20])
    return (
        tuple(sorted((d, m["sha256"]) for d, m in index.documents.items())),
        tuple((s["chunks"], tuple(s["deleted"])) for s in index.manifest["segments"]),
        tuple(c.chunk_id for c in index.chunks),
        tuple(sorted(index.chunk_vectors.ids().tolist())),
        tuple(sorted(index.sentence_vectors.ids().tolist())),
        index.bm25.n_docs,
        tuple(index.bm25.vocabulary),
    )


def debris(index_dir: Path) -> str:
    """What a killed run left: a staging folder, a never-current generation or segment, or nothing."""
    live = current_generation(index_dir)
    named = {p.name for p in segment_folders(index_dir)}
    names = [p.name for p in index_dir.iterdir()] if index_dir.exists() else []
    if any(n.startswith((".gen-", ".seg-")) for n in names):
        return "staging folder left"
    if any(n.startswith("gen-") and (live is None or n != live.name) for n in names):
        return "uncommitted generation left"
    if any(n.startswith("seg-") and n not in named for n in names):
        return "uncommitted segment left"
    return "no debris"


def writing(index_dir: Path) -> bool:
    try:
        return any(p.name.startswith((".gen-", ".seg-")) for p in index_dir.iterdir())
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("phase", ["full build", "refresh", "merge"])
def test_sigkill_at_random_moments_leaves_the_old_or_the_new_index(tmp_path, tiny_model, phase):
    v1 = write_corpus(tmp_path / "corpus-v1", 1)
    v2 = write_corpus(tmp_path / "corpus-v2", 2)
    old = None
    old_index = tmp_path / "old-index"
    extra = ("--optimize",) if phase == "merge" else ()
    if phase != "full build":
        assert run(rag_index(v1, old_index, tiny_model)).returncode == 0
    if phase == "merge":  # two segments, the first with deletions: what --optimize merges
        assert run(rag_index(v2, old_index, tiny_model)).returncode == 0
        assert len(segment_folders(old_index)) == 2
    if phase != "full build":
        old = fingerprint(old_index)

    def fresh(index_dir: Path) -> None:
        shutil.rmtree(index_dir, ignore_errors=True)
        if phase != "full build":
            shutil.copytree(old_index, index_dir)

    reference = tmp_path / "reference"
    fresh(reference)
    started = time.monotonic()
    done = run(rag_index(v2, reference, tiny_model, *extra))
    duration = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    new = fingerprint(reference)
    assert new != old

    rng = random.Random(f"sigkill-{phase}")
    outcomes: Counter[str] = Counter()
    for trial in range(TRIALS_PER_PHASE):
        index_dir = tmp_path / f"trial-{trial}"
        fresh(index_dir)
        proc = subprocess.Popen(
            rag_index(v2, index_dir, tiny_model, *extra),
            cwd=PROJECT_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if trial % 2:
            delay = rng.uniform(0, duration)
            time.sleep(delay)
        else:
            delay = rng.uniform(0, 0.15)
            while proc.poll() is None and not writing(index_dir):
                time.sleep(0.002)  # watching for the write to begin, not timing anything
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)  # only the process this test started, by its pid
        code = proc.wait()
        left = debris(index_dir)

        if current_generation(index_dir) is None:
            assert phase == "full build", f"trial {trial}: the previous index is gone"
            state = "no index yet"
        else:
            got = fingerprint(index_dir)
            assert got in (old, new), f"trial {trial}: the kill left a mix"
            state = "old index" if got == old else "new index"
        outcomes[f"{state}, {left}" + (", finished before the kill" if code == 0 else "")] += 1

        after = run(rag_index(v2, index_dir, tiny_model, *extra))
        assert after.returncode == 0, after.stderr
        assert fingerprint(index_dir) == new
        assert debris(index_dir) == "no debris"
    print(f"\n{phase}: {TRIALS_PER_PHASE} SIGKILL trials (uncut run {duration:.1f} s):")
    for outcome, count in sorted(outcomes.items()):
        print(f"  {count:3d}  {outcome}")
    # The kills must have hit more than the start-up: some left work unfinished.
    interrupted = sum(n for o, n in outcomes.items() if "finished before" not in o)
    assert interrupted >= TRIALS_PER_PHASE // 2, outcomes


def test_two_rag_index_runs_at_once_one_waits_and_neither_corrupts(tmp_path, tiny_model):
    corpus = write_corpus(tmp_path / "corpus", 2)
    index_dir = tmp_path / "index"
    with index_lock(index_dir):  # as if a third run were writing
        first = subprocess.Popen(
            rag_index(corpus, index_dir, tiny_model), cwd=PROJECT_ROOT, stderr=subprocess.PIPE, text=True
        )
        waiting = first.stderr.readline()  # blocks until it says something
        assert "waiting for another `rag index` to finish" in waiting
        second = subprocess.Popen(
            rag_index(corpus, index_dir, tiny_model, "--rebuild"), cwd=PROJECT_ROOT, stderr=subprocess.PIPE, text=True
        )
        assert "waiting for another `rag index`" in second.stderr.readline()
    assert first.wait() == 0 and second.wait() == 0, (first.stderr.read(), second.stderr.read())
    index = load_index(index_dir)
    assert len(index.documents) == 60
    assert sorted(p.name for p in index_dir.iterdir() if "gen-" in p.name) == [current_generation(index_dir).name]


FIFTY_MB_SCRIPT = """
import resource
import sys
from pathlib import Path
sys.path.insert(0, "tests")
from conftest import FakeEmbedder
from rag.config import Settings
from rag.indexing import load_index, refresh_index

settings = Settings(corpus_dir=Path(sys.argv[1]), index_dir=Path(sys.argv[2]))
report = refresh_index(settings, FakeEmbedder())
print(report.summary())
index = load_index(settings.index_dir)
print("chunks", len(index.chunks))
# VmHWM is this program's own peak: ru_maxrss keeps, across exec, the peak of the process it was
# forked from, so a large test session (models loaded by earlier tests) showed through it.
status = Path("/proc/self/status")
lines = status.read_text().splitlines() if status.exists() else []
hwm = [line.split()[1] for line in lines if line.startswith("VmHWM:")]
peak_kb = int(hwm[0]) if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print("peak-rss-mb", peak_kb / 1024)
"""


def test_a_50_mb_text_file_is_indexed_with_progress_and_bounded_memory(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    paragraph = (
        "The river delta region grew quickly over the last decade. Ports along the coast handled more cargo. "
        "长三角地区近年来取得了重大科技成果，其中浙江165项。\n"
    )
    size = 50 * 2**20
    with (corpus / "big.txt").open("w", encoding="utf-8") as fh:
        written, i = 0, 0
        while written < size:
            line = f"Section {i}. Report {i * 7919 % 100003} about item {i}. {paragraph}"
            written += len(line.encode("utf-8"))
            fh.write(line)
            i += 1
    (corpus / "small.txt").write_text("Lighthouse notes\nThe keeper lights the lamp at dusk.\n", encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, "-c", FIFTY_MB_SCRIPT, str(corpus), str(tmp_path / "index")],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak_mb = float(proc.stdout.split("peak-rss-mb ")[1])
    assert "added 2" in proc.stdout and "skipped 0" in proc.stdout
    progress = proc.stderr.replace("\r", "\n")
    for bar in ("chunking", "embedding chunks", "embedding sentences"):
        assert bar in progress, f"no {bar!r} progress shown"
    print(f"\n50 MB file: peak RSS {peak_mb:.0f} MB")
    # Memory grows with the text (chunks, terms and vectors are held for the new generation),
    # but by a bounded factor: no copy per chunk, no quadratic step.
    assert peak_mb < 40 * size / 2**20, f"peak RSS {peak_mb:.0f} MB for a 50 MB file"
