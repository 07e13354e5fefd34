"""The web app serves no file outside Gradio's own assets, refuses uploads, and renders documents inert.

The app is launched in-process on a free loopback port with app.py's own launch settings
(`web.launch_options`) over a corpus holding a hostile document, then probed over HTTP.
"""

from __future__ import annotations

import socket
import sys
import urllib.parse

import httpx
import pytest

from rag import web
from rag.assistant import Assistant
from rag.chat import document_html, document_text, sources_html
from rag.collection import Library
from rag.config import PROJECT_ROOT
from rag.history import History

HOSTILE = (
    "Hostile notes about the lighthouse keeper.\n"
    "<script>alert('doc')</script><img src=x onerror=alert(1)> [click](javascript:alert(2)) "
    '<a href="javascript:alert(3)">x</a> <iframe src="https://example.com"></iframe> {{7*7}} $x^2$\n'
)
SECRET = "root:x:0:0"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base url, settings) of the chat app running over a small corpus with a hostile document."""
    sys.path.insert(0, str(PROJECT_ROOT / "tests"))
    from conftest import CORPUS, FakeEmbedder

    from rag.config import Settings

    root = tmp_path_factory.mktemp("served")
    corpus = root / "corpus"
    corpus.mkdir()
    for name, text in {**CORPUS, "hostile.txt": HOSTILE}.items():
        (corpus / name).write_text(text, encoding="utf-8")
    # A 1 KB upload limit: the probe below sends more.
    settings = Settings(
        corpus_dir=corpus, index_dir=root / "index", chunk_tokens=32, chunk_overlap=8, max_upload_mb=1 / 1024
    )
    assistant = Assistant(settings, FakeEmbedder())
    assistant.refresh()
    demo = web.build_app(Library(settings, assistant), History(root / "chat.sqlite3"))
    demo.queue(default_concurrency_limit=2, max_size=16)
    port = free_port()
    options = web.launch_options(settings)
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **options)
    try:
        yield f"http://127.0.0.1:{port}", settings, assistant
    finally:
        demo.close()


def probes(settings) -> list[str]:
    corpus, index = settings.corpus_dir, settings.index_dir
    targets = [
        "/etc/passwd",
        str(corpus / "alpha.txt"),
        str(corpus / "hostile.txt"),
        str(index / "CURRENT"),
        str(PROJECT_ROOT / "app.py"),
        str(PROJECT_ROOT / "rag" / "web.py"),
        str(PROJECT_ROOT / "pyproject.toml"),
        "app.py",
        "../../../../../../etc/passwd",
        "..%2f..%2f..%2f..%2fetc%2fpasswd",
    ]
    paths = []
    for target in targets:
        quoted = urllib.parse.quote(target, safe="/%")
        paths += [f"/gradio_api/file={quoted}", f"/file={quoted}", f"/gradio_api/file/{quoted.lstrip('/')}"]
    paths += [
        "/static/../../app.py",
        "/static/%2e%2e/%2e%2e/app.py",
        "/assets/../app.py",
        "/assets/%2e%2e%2f%2e%2e%2fapp.py",
        "/gradio_api/proxy=file:///etc/passwd",
    ]
    return paths


pytestmark = pytest.mark.integration


def test_no_file_outside_gradios_assets_is_served(served):
    base, settings, _ = served
    app_source = (PROJECT_ROOT / "rag" / "web.py").read_text(encoding="utf-8")
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/").status_code == 200  # the server is up: the refusals below mean something
        for path in probes(settings):
            response = client.get(path)
            body = response.text
            assert SECRET not in body, path
            assert "Lighthouse" not in body and "zeppelin" not in body, path  # no corpus file
            assert app_source[:200] not in body, path
            assert response.status_code in (400, 403, 404, 405), (path, response.status_code)


def test_an_upload_over_the_limit_is_refused_and_none_reaches_a_corpus_folder_by_itself(served):
    base, settings, _ = served
    with httpx.Client(base_url=base, timeout=30) as client:
        response = client.post("/gradio_api/upload", files={"files": ("../../evil.txt", b"x" * 2048, "text/plain")})
        assert response.status_code == 413, response.text
        # Under the limit Gradio keeps it in its own temporary folder; only rag.upload moves files on.
        response = client.post("/gradio_api/upload", files={"files": ("../../evil.txt", b"x" * 100, "text/plain")})
    assert response.status_code == 200, response.text
    assert not (settings.corpus_dir / "evil.txt").exists()
    assert not list(settings.corpus_dir.parent.glob("**/evil.txt"))


def test_the_monitoring_summary_is_off(served):
    base, _, _ = served
    with httpx.Client(base_url=base, timeout=30) as client:
        assert client.get("/gradio_api/monitoring/summary").status_code in (403, 404)
        assert client.get("/monitoring/summary").status_code in (403, 404)


def test_a_hostile_document_renders_inert_in_sources_and_viewer(served):
    _, settings, assistant = served
    answer = assistant.ask("What are the hostile notes about the lighthouse keeper?")
    passages = answer.citations or answer.nearest
    assert "hostile.txt" in {c.doc_id for c in passages}
    text = document_text(assistant.index, settings.corpus_dir, "hostile.txt")
    for rendered in (sources_html(answer), document_html("hostile.txt", "Hostile", text)):
        for raw in ("<script", "<img", "<a href", "<iframe"):
            assert raw not in rendered
        assert "&lt;script&gt;" in rendered  # shown as text, not dropped
