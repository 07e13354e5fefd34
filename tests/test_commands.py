"""Every `rag` command the README shows, run as a user would: a subprocess of this environment.

The commands run over the small test corpus with its own index, and the eval over two questions,
so the whole module takes about a minute, most of it starting Python with the model each time.
`rag serve` is started on a free loopback port, its page fetched, then stopped.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import stop_process

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SERVE_TIMEOUT_S = 180
QA = [
    {
        "id": "s1",
        "question": "What carries tourists between the islands?",
        "answers": ["zeppelin Aurora"],
        "doc_ids": ["alpha.txt"],
        "tags": ["q-en"],
    },
    {
        "id": "s2",
        "question": "论坛集中展示了多少项重大科技成果？",
        "answers": ["585"],
        "doc_ids": ["chinese.txt"],
        "tags": ["q-zh"],
    },
]


def _rag() -> list[str]:
    """The installed `rag` script beside this Python, else the module it runs."""
    script = shutil.which("rag", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "rag.cli"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> dict[str, object]:
    from conftest import CORPUS

    root = tmp_path_factory.mktemp("commands")
    corpus = root / "corpus"
    corpus.mkdir()
    for name, text in CORPUS.items():
        (corpus / name).write_text(text, encoding="utf-8")
    # The user's environment less any RAG_* setting, the model converted once per session.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAG_")}
    env |= {
        "RAG_HOME": str(root / "home"),
        "RAG_CACHE_DIR": str(model_cache_dir),
        "RAG_CORPUS_DIR": str(corpus),
        "RAG_INDEX_DIR": str(root / "index"),
    }
    return {"root": root, "env": env}


def _run(workspace: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [*_rag(), *args],
        cwd=workspace["root"],  # not the repository: nothing may depend on the working directory
        env=workspace["env"],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
    )
    assert result.returncode == 0, f"rag {' '.join(args)} exited {result.returncode}:\n{result.stderr[-3000:]}"
    return result


def test_index_then_rebuild(workspace):
    first = _run(workspace, "index")
    assert "index:" in first.stdout
    assert "up to date" in _run(workspace, "index").stdout
    assert "index:" in _run(workspace, "index", "--rebuild").stdout


def test_ask_prints_an_answer_with_sources(workspace):
    out = _run(workspace, "ask", "What carries tourists between the islands?").stdout
    assert "Sources:" in out and "alpha.txt" in out


def test_ask_json(workspace):
    answer = json.loads(_run(workspace, "ask", "--json", "Who won the 2022 FIFA World Cup?").stdout)
    assert {"question", "answer"} <= set(answer)


def test_eval_writes_a_report_and_compare_reads_two(workspace):
    root = workspace["root"]
    qa = root / "qa.jsonl"
    qa.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in QA), encoding="utf-8")
    out = _run(workspace, "eval", "--qa", str(qa), "--out", "report-a")
    assert "answer_accuracy" in out.stdout or "answer acc" in out.stdout
    assert {p.name for p in (root / "report-a").iterdir()} == {"report.json", "report.md", "report.png"}
    report = json.loads((root / "report-a" / "report.json").read_text(encoding="utf-8"))
    report["answer_accuracy"] = -1.0
    (root / "report-b").mkdir()
    (root / "report-b" / "report.json").write_text(json.dumps(report), encoding="utf-8")
    compared = _run(workspace, "eval", "--compare", "report-a/report.json", "report-b/report.json").stdout
    assert "answer_accuracy" in compared


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_http_then_stops(workspace):
    port = _free_port()
    log = workspace["root"] / "serve.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [*_rag(), "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=workspace["root"],
            env=workspace["env"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT_S
        while True:
            assert server.poll() is None, f"rag serve exited {server.returncode}:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
                    page = response.read().decode("utf-8", "replace")
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"rag serve not up in {SERVE_TIMEOUT_S} s:\n{log.read_text()[-3000:]}"
            time.sleep(0.5)
        assert "Ask your documents" in page
    finally:
        stop_process(server)


def test_a_folder_of_every_format_is_indexed_or_skipped_with_reasons_and_the_pdf_page_is_cited(workspace):
    from test_formats import folder_of_every_kind

    folder = folder_of_every_kind(workspace["root"] / "every-kind")
    where = ["--corpus", str(folder), "--index-dir", str(workspace["root"] / "every-kind-index")]
    report = json.loads(_run(workspace, "index", "--json", *where).stdout)
    assert sorted(report["added"]) == sorted(
        [
            "report.pdf",
            "ferries.docx",
            "plan.pptx",
            "registry.xlsx",
            "tales.epub",
            "marina.html",
            "notes.pdf",
            "scanned-name.txt",
        ]
    )
    reasons = {s["doc_id"]: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"locked.pdf", "broken.docx", "data.json"} and reasons["locked.pdf"].startswith("encrypted")
    answer = json.loads(
        _run(workspace, "ask", "--json", *where, "When was the lighthouse on Gull Point finished?").stdout
    )
    assert not answer["abstained"] and "March" in answer["answer"]
    cited = answer["citations"][0]
    assert (cited["doc_id"], cited["page"], cited["section"]) == ("report.pdf", 2, "Lighthouse")
    assert cited["title"] == "Harbour Annual Report 2024"
    text = _run(workspace, "ask", *where, "When was the lighthouse on Gull Point finished?").stdout
    assert "report.pdf · p. 2 · Lighthouse" in text


def test_a_collection_is_created_indexed_and_asked(workspace):
    created = _run(workspace, "collection", "create", "okapi").stdout
    corpus = Path(workspace["env"]["RAG_HOME"]) / "collections" / "okapi" / "corpus"
    assert str(corpus) in created
    (corpus / "okapi.txt").write_text("The okapi harbour opens at dawn and closes at nine.\n", encoding="utf-8")
    index_dir = corpus.parent / "index"
    assert str(index_dir) in _run(workspace, "index", "--collection", "okapi").stdout
    assert "okapi\t1 documents\tshared" in _run(workspace, "collection", "list").stdout
    answer = json.loads(
        _run(workspace, "ask", "--json", "--collection", "okapi", "When does the okapi harbour open?").stdout
    )
    assert [c["doc_id"] for c in answer["citations"]] == ["okapi.txt"]
    assert "alpha.txt" not in _run(workspace, "ask", "--collection", "okapi", "What carries tourists?").stdout
