"""End to end: the web chat in headless Debian Chromium, driven by Playwright.

Starts `python app.py` on a free loopback port over a copy of the bundled corpus plus a PDF and one
hostile document, waits in the page while it builds the index, asks in Chinese and English,
follows up, checks that the hostile markup stays inert, shows a cited PDF page as an image, and
refreshes the index; then the input hints, the trash icon, 👎 feedback and its export, a reload
that finds the conversation, and switching to a second collection; then typing while an answer
comes, [n] to its card, copy, uploading a file and asking about it, and the phone layout. The
tests share one page and run in file order. A second server with a users file checks that two
users each see only their own conversations and the collections they are allowed.
Needs /usr/bin/chromium (`apt-get install chromium`) and the playwright package; it never
downloads a browser. The screenshot goes to docs/screenshot.png.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import stop_process

from rag import auth, collection
from rag.config import DEFAULT_EMBED_MODEL

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "screenshot.png"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STARTUP_TIMEOUT_S = 600  # a fresh machine converts the model and embeds the corpus first
ANSWER_TIMEOUT_MS = 120_000

# Every way we know for document text to run script if it were rendered as markup.
HOSTILE_DOC = """\
Zebra lantern notice <img src=x onerror="window.__pwned=1">

The zebra lantern protocol is a made-up phrase for testing. <script>window.__pwned=1</script>
The zebra lantern image check <img src=x onerror="window.__pwned=1"> ends here.
The zebra lantern link check [click me](javascript:window.__pwned=1) ends here.
The zebra lantern template check ${window.__pwned=1} {{constructor.constructor('window.__pwned=1')()}} ends here.
"""
HOSTILE_ID = "zz_hostile.txt"
PDF_ID = "zz_harbour.pdf"  # tests/test_preview.py's two pages; the answer is on page 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_until_serving(url: str, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"app.py exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    pytest.fail(f"app.py did not serve {url} within {STARTUP_TIMEOUT_S} s:\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    corpus = tmp_path_factory.mktemp("web") / "corpus"
    shutil.copytree(ROOT / "corpus", corpus)
    (corpus / HOSTILE_ID).write_text(HOSTILE_DOC, encoding="utf-8")
    from test_preview import two_page_pdf

    (corpus / PDF_ID).write_bytes(two_page_pdf())
    return corpus


OKAPI_DOC = "The okapi harbour opens at dawn and closes at nine in the evening.\n"
PASSWORDS = {"alice": "correct horse", "bob": "battery staple"}


def _start(corpus: Path, home: Path, model_cache_dir: Path, **env_extra: str):
    """`python app.py` over `corpus` with `home` as RAG_HOME; the (process, url, log)."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's browser with `apt-get install chromium`")
    port = _free_port()
    # The defaults, whatever the caller's RAG_* settings; the model cache is shared (RAG_CACHE_DIR if set).
    env = {name: value for name, value in os.environ.items() if not name.startswith("RAG_")}
    env.update(
        RAG_HOME=str(home),
        RAG_CORPUS_DIR=str(corpus),
        RAG_INDEX_DIR=str(corpus.parent / "index"),
        RAG_CACHE_DIR=str(model_cache_dir),
        **env_extra,
    )
    log = home / "app.log"
    home.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_until_serving(url, proc, log)
    except BaseException:
        stop_process(proc)
        raise
    return proc, url, env


def _add_collection(home: Path, name: str, users: list[str] | None = None) -> None:
    """A collection made in `home` as `rag collection create` would, holding the okapi note."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAG_HOME", str(home))
        made = collection.create(name, users)
    (made.folder / "corpus" / "okapi.txt").write_text(OKAPI_DOC, encoding="utf-8")


@pytest.fixture(scope="module")
def served(corpus: Path, model_cache_dir: Path):
    home = corpus.parent / "home"
    _add_collection(home, "okapi")
    proc, url, env = _start(corpus, home, model_cache_dir)
    try:
        yield url, env
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def server(served) -> str:
    return served[0]


@pytest.fixture(scope="module")
def page(server: str):
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (never `playwright install`)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.rstrip("/"))
        page = context.new_page()
        page.goto(server)
        page.wait_for_selector("#question textarea", timeout=60_000)
        page.wait_for_timeout(1500)  # the first poll of the index build's progress
        page.first_look = {"banner": page.locator("#startup").inner_text()}
        if "Building the index" in page.first_look["banner"]:
            page.fill("#question textarea", "Who is the chairman of the board of Huali Group Co., Ltd.?")
            page.press("#question textarea", "Enter")
            _expect(page.locator("#hint")).to_contain_text("The index is being built")
            page.first_look["kept"] = page.input_value("#question textarea")
        _wait_until_ready(page)
        _expect(page.locator("#startup")).to_have_text("")
        yield page
        browser.close()


def _expect(locator):
    from playwright.sync_api import expect

    return expect(locator)


def ask(page, question: str) -> str:
    """Ask `question` and wait for the complete answer (the footer comes with the last step)."""
    bots = page.locator('#chat [data-testid="bot"]')
    before = bots.count()
    page.fill("#question textarea", question)
    page.press("#question textarea", "Enter")
    _expect(bots).to_have_count(before + 1, timeout=ANSWER_TIMEOUT_MS)
    _expect(bots.last.locator(".cite-list, em")).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)
    return bots.last.inner_text()


def test_the_page_is_served_while_the_index_builds_and_a_question_then_waits_in_the_box(page):
    # The fixture opened the page as soon as it was served, asked at once, and waited for the index.
    if "Building the index" not in page.first_look["banner"]:
        pytest.skip("the index was ready before the page's first look (a warm, fast machine)")
    assert page.first_look["kept"].startswith("Who is the chairman")
    assert page.locator('#chat [data-testid="bot"]').count() == 0


def test_chinese_question_is_answered_with_its_source(page):
    answer = ask(page, "第二届长三角一体化发展高层论坛集中展示了多少项重大科技成果?")
    assert "585" in answer
    _expect(page.locator("#sources")).to_contain_text("002_45de342918c548f4.txt")
    _expect(page.locator("#sources mark")).to_contain_text(["585"])


def test_english_question_is_answered_with_its_source(page):
    answer = ask(page, "Who is the chairman of the board of Huali Group Co., Ltd.?")
    assert "Wang Licheng" in answer
    assert "[1]" in answer
    _expect(page.locator("#sources")).to_contain_text("000_a8a753100bc1bd62.txt")
    _expect(page.locator("#sources .src-card").first).to_contain_text("[1]")


def test_follow_up_is_searched_with_the_previous_question(page):
    answer = ask(page, "Which business alliance is he vice chairman of?")
    assert "Entrepreneurs Alliance" in answer
    sources = page.locator("#sources")
    _expect(sources).to_contain_text("Searched with the conversation's context")
    _expect(sources).to_contain_text("Huali Group")
    _expect(sources).to_contain_text("000_a8a753100bc1bd62.txt")
    page.click("#open-doc")  # the cited document, with the quoted sentence marked
    _expect(page.locator("#document mark")).to_contain_text(["Entrepreneurs Alliance"])
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_hostile_document_renders_inert(page):
    page.click("text=New conversation")
    _expect(page.locator('#chat [data-testid="bot"]')).to_have_count(0)
    ask(page, "What is the zebra lantern protocol?")
    sources = page.locator("#sources")
    _expect(sources).to_contain_text(HOSTILE_ID)
    _expect(sources).to_contain_text("<script>window.__pwned=1</script>")  # shown as text
    page.click("#open-doc")
    viewer = page.locator("#document")
    _expect(viewer).to_contain_text('<img src=x onerror="window.__pwned=1">')
    _expect(viewer).to_contain_text("[click me](javascript:window.__pwned=1)")
    _expect(viewer).to_contain_text("${window.__pwned=1}")
    page.wait_for_timeout(1000)  # time for a broken <img> to fire onerror, if one had been made
    assert page.evaluate("typeof window.__pwned") == "undefined"
    injected = "#chat script, #chat img, #sources script, #sources img, #document script, #document img"
    assert page.locator(injected).count() == 0
    assert page.locator('a[href^="javascript:"]').count() == 0


def test_a_cited_pdf_page_is_shown_as_an_image(page):
    page.click("text=New conversation")
    _expect(page.locator('#chat [data-testid="bot"]')).to_have_count(0)  # cleared before asking
    ask(page, "How many ships did the lighthouse keeper count entering the harbour?")
    _expect(page.locator("#sources")).to_contain_text(PDF_ID)
    page.click("#open-doc")
    _expect(page.locator("#document mark")).to_contain_text(["412 ships"])
    _expect(page.locator("#document .page-image summary")).to_contain_text("Page 2")
    image = page.locator("#document .page-image img")
    _expect(image).to_have_count(1)
    assert image.evaluate("img => img.complete && img.naturalWidth") > 0  # the PNG decoded


def test_refresh_index_picks_up_a_new_document(page, corpus: Path):
    (corpus / "zz_added.txt").write_text("An added note about the okapi harbour.\n", encoding="utf-8")
    page.get_by_role("tab", name="Index · 索引").click()
    _expect(page.locator("#index-panel")).to_contain_text(DEFAULT_EMBED_MODEL)
    _expect(page.locator("#index-panel")).to_contain_text(HOSTILE_ID)
    page.click("#refresh")
    status = page.locator("#refresh-status textarea")
    _expect(status).to_have_value(re.compile("added 1"), timeout=ANSWER_TIMEOUT_MS)
    _expect(page.locator("#index-panel")).to_contain_text("zz_added.txt")
    assert page.evaluate("typeof window.__pwned") == "undefined"


# --------------------------------------------------------------------------- input, history, feedback


def test_an_empty_question_gets_a_hint_and_a_too_long_one_is_refused_without_being_echoed(page):
    page.get_by_role("tab", name="Chat · 问答").click()
    bots = page.locator('#chat [data-testid="bot"]')
    before = bots.count()
    page.fill("#question textarea", "   ")
    page.click("#ask")
    _expect(page.locator("#hint")).to_contain_text("Type a question first")
    long_question = "zebra " * 4000
    page.fill("#question textarea", long_question)
    page.click("#ask")
    _expect(page.locator("#hint")).to_contain_text("the limit is 2000")
    assert "zebra zebra zebra" not in page.locator("#chat").inner_text()
    assert bots.count() == before
    assert page.input_value("#question textarea") == long_question  # kept to be shortened, not lost


def test_the_trash_icon_also_resets_the_sources_and_the_follow_up_context(page):
    ask(page, "Who is the chairman of the board of Huali Group Co., Ltd.?")
    _expect(page.locator("#sources")).to_contain_text("000_a8a753100bc1bd62.txt")
    page.locator('#chat button[aria-label="Clear"]').click()
    _expect(page.locator('#chat [data-testid="bot"]')).to_have_count(0)
    _expect(page.locator("#sources .src-empty")).to_have_count(1)
    ask(page, "Which business alliance is he vice chairman of?")
    # Read on its own: not searched with the erased question about Huali Group.
    _expect(page.locator("#sources")).not_to_contain_text("Searched with the conversation's context")


def test_a_thumbs_down_with_a_comment_is_exported_as_an_eval_case(page, served, tmp_path: Path):
    page.click("#new-chat")
    _expect(page.locator('#chat [data-testid="bot"]')).to_have_count(0)
    ask(page, "第二届长三角一体化发展高层论坛集中展示了多少项重大科技成果?")
    page.locator('#chat button[aria-label="Dislike"]').last.click()
    _expect(page.locator("#hint")).to_contain_text("What was wrong?")
    page.fill("#comment textarea", "should also say how many came from Zhejiang")
    page.click("#send-comment")
    _expect(page.locator("#hint")).to_contain_text("Comment saved")
    out = tmp_path / "feedback.jsonl"
    subprocess.run(
        [sys.executable, "-m", "rag.cli", "feedback", "export", "--out", str(out)],
        cwd=ROOT,
        env=served[1],
        check=True,
        capture_output=True,
        timeout=120,
    )
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    [row] = [r for r in rows if r["question"].startswith("第二届长三角")]
    assert row["answers"] is None and "585" in row["feedback"]["given_answer"]
    assert row["feedback"]["comment"] == "should also say how many came from Zhejiang"
    assert row["feedback"]["collection"] == "default"


def test_a_reload_finds_the_conversation(page):
    page.reload()
    page.wait_for_selector("#question textarea", timeout=60_000)
    _expect(page.locator("#conversations")).to_contain_text("第二届长三角一体化发展高层论坛")
    _expect(page.locator('#chat [data-testid="bot"]').last).to_contain_text("585")  # the latest, reopened
    _expect(page.locator('#chat button[aria-label="Disliked"]')).to_have_count(1)  # with its 👎
    # Older ones: the zebra question alone; the PDF question, then (before the trash icon) the chairman's.
    page.locator("#conversations label", has_text="What is the zebra lantern protocol?").click()
    # Its text, not only a count of 1 (which the conversation shown before it also has): wait for the load.
    _expect(page.locator('#chat [data-testid="bot"]').last).to_contain_text("zebra lantern")
    _expect(page.locator('#chat [data-testid="bot"]')).to_have_count(1)
    page.locator("#conversations label", has_text="How many ships did the lighthouse keeper").click()
    _expect(page.locator('#chat [data-testid="bot"]')).to_have_count(2)
    _expect(page.locator('#chat [data-testid="bot"]').last).to_contain_text("Wang Licheng")


def _choose_collection(page, name: str) -> None:
    page.click("#collection input")
    page.get_by_role("option", name=name, exact=True).click()


def test_each_collection_answers_from_its_own_index_and_keeps_its_own_conversations(page):
    _choose_collection(page, "okapi")
    _expect(page.locator('#chat [data-testid="bot"]')).to_have_count(0)
    _expect(page.locator("#conversations label")).to_have_count(0)
    answer = ask(page, "When does the okapi harbour open?")
    assert "dawn" in answer
    _expect(page.locator("#sources")).to_contain_text("okapi.txt")
    _choose_collection(page, "default")
    _expect(page.locator('#chat [data-testid="bot"]').last).to_contain_text("585")
    _expect(page.locator("#conversations")).not_to_contain_text("okapi harbour")
    _choose_collection(page, "okapi")
    _expect(page.locator('#chat [data-testid="bot"]').last).to_contain_text("dawn")
    _expect(page.locator("#conversations")).to_contain_text("When does the okapi harbour open?")


# --------------------------------------------------------------------------- login


@pytest.fixture(scope="module")
def auth_server(corpus: Path, served, model_cache_dir: Path, tmp_path_factory):
    """A second server over the same corpus and index, with a users file and a collection for alice only."""
    home = tmp_path_factory.mktemp("auth") / "home"
    users = home.parent / "users.json"
    for name, password in PASSWORDS.items():
        auth.add_user(users, name, password)
    _add_collection(home, "alices", users=["alice"])
    proc, url, _ = _start(corpus, home, model_cache_dir, RAG_AUTH_FILE=str(users))
    try:
        yield url
    finally:
        stop_process(proc)


def _wait_until_ready(page) -> None:
    """The page is served while the index builds; it answers once the index panel is filled."""
    page.wait_for_selector("#question textarea", timeout=60_000)
    page.wait_for_selector("#startup .index-ready", state="attached", timeout=STARTUP_TIMEOUT_S * 1000)


def _log_in(browser, url: str, name: str, password: str):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(url)
    page.fill('input[data-testid="textbox"]', name)
    page.fill('input[type="password"]', password)
    page.get_by_role("button", name="Login").click()
    _wait_until_ready(page)
    return page


def _collections_offered(page) -> list[str]:
    page.click("#collection input")
    options = page.get_by_role("option")
    _expect(options.first).to_be_visible()
    names = [text.split("\n")[-1].strip() for text in options.all_inner_texts()]  # less the ✓ of the chosen one
    page.keyboard.press("Escape")
    return names


def test_two_users_see_only_their_own_conversations_and_allowed_collections(page, auth_server):
    browser = page.context.browser
    wrong = browser.new_page()
    wrong.goto(auth_server)
    wrong.fill('input[data-testid="textbox"]', "alice")
    wrong.fill('input[type="password"]', "not her password")
    wrong.get_by_role("button", name="Login").click()
    _expect(wrong.get_by_text("Incorrect Credentials")).to_be_visible()
    wrong.close()

    alice = _log_in(browser, auth_server, "alice", PASSWORDS["alice"])
    ask(alice, "Who is the chairman of the board of Huali Group Co., Ltd.?")
    _expect(alice.locator("#conversations")).to_contain_text("Who is the chairman")
    assert _collections_offered(alice) == ["default", "alices"]

    bob = _log_in(browser, auth_server, "bob", PASSWORDS["bob"])
    assert _collections_offered(bob) == ["default"]
    _expect(bob.locator('#chat [data-testid="bot"]')).to_have_count(0)
    assert "Who is the chairman" not in bob.locator("#conversations").inner_text()
    ask(bob, "第二届长三角一体化发展高层论坛集中展示了多少项重大科技成果?")

    alice.reload()
    alice.wait_for_selector("#question textarea", timeout=60_000)
    _expect(alice.locator("#conversations")).to_contain_text("Who is the chairman")
    assert "第二届长三角" not in alice.locator("#conversations").inner_text()
    for p in (alice, bob):
        p.close()


# --------------------------------------------------------------------------- streaming, sources, upload, phone


def test_what_is_typed_while_an_answer_comes_stays_and_is_asked_next(page):
    _choose_collection(page, "default")
    page.click("#new-chat")
    bots = page.locator('#chat [data-testid="bot"]')
    _expect(bots).to_have_count(0)
    page.fill("#question textarea", "Who is the chairman of the board of Huali Group Co., Ltd.?")
    # A slow page (CPU throttled 6x), as on a busy machine: keystrokes land before the send is dispatched.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Emulation.setCPUThrottlingRate", {"rate": 6})
    page.press("#question textarea", "Enter")
    page.locator("#question textarea").press_sequentially("第二届长三角一体化发展高层论坛集中展示了多少项重大科技成果?")
    cdp.send("Emulation.setCPUThrottlingRate", {"rate": 1})
    _expect(bots.first.locator(".cite-list")).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)
    # The answer's updates never erased the box: what was typed meanwhile is still there, whole.
    assert page.input_value("#question textarea") == "第二届长三角一体化发展高层论坛集中展示了多少项重大科技成果?"
    page.press("#question textarea", "Enter")
    _expect(bots).to_have_count(2, timeout=ANSWER_TIMEOUT_MS)
    _expect(bots.last.locator(".cite-list")).to_have_count(1, timeout=ANSWER_TIMEOUT_MS)
    assert "585" in bots.last.inner_text() and page.input_value("#question textarea") == ""
    _expect(page.locator("#stop")).to_be_visible()


def test_clicking_a_citation_scrolls_to_its_card_and_flashes_it(page):
    page.set_viewport_size({"width": 1400, "height": 500})  # short, so the card starts out of view
    card = page.locator("#sources .src-card").first
    page.evaluate("window.scrollTo(0, 0)")
    page.locator('#chat [data-testid="bot"]').last.locator("sup.cite").first.click()
    _expect(card).to_have_class(re.compile("flash"))
    _expect(card).to_be_in_viewport()
    _expect(card.locator(".src-relevance")).to_contain_text(re.compile("已引用|Quoted"))
    # No fusion score or offsets in view: they are behind the details toggle.
    assert (
        "score" not in card.locator(".src-meta").inner_text() and "得分" not in card.locator(".src-meta").inner_text()
    )
    _expect(card.locator("details.src-details")).not_to_have_attribute("open", "")
    page.set_viewport_size({"width": 1400, "height": 1000})


def test_copy_gives_the_answer_as_plain_text_with_its_numbered_sources(page):
    bot = page.locator('#chat [data-testid="bot"]').last
    bot.hover()
    page.locator('#chat button[aria-label="Copy message"]').last.click()
    page.wait_for_function("() => (window.ragCopied || '').includes('585')")  # set by the copy handler
    copied = page.evaluate("navigator.clipboard.readText()")
    assert "585" in copied and "[1]" in copied
    assert re.search(r"\n\[1\] \S", copied)  # the numbered source list
    for markup in ("<", ">", "&#", "&lt;", "&amp;"):
        assert markup not in copied
    label = bot.get_attribute("aria-label")
    assert "585" in label and "<" not in label and "&#" not in label


def test_a_file_uploaded_into_a_collection_is_answered_from_and_a_bad_one_is_refused_with_its_reason(page, tmp_path):
    _choose_collection(page, "okapi")
    page.get_by_role("tab", name="Index · 索引").click()
    (tmp_path / "lighthouse.md").write_text(
        "# Lighthouse log\n\nThe quokka lighthouse keeper lights the lamp at seven every evening.\n", encoding="utf-8"
    )
    (tmp_path / "report.pdf").write_text("this is not a PDF\n", encoding="utf-8")
    page.set_input_files("#upload input[type=file]", [str(tmp_path / "lighthouse.md"), str(tmp_path / "report.pdf")])
    report = page.locator("#upload-report")
    _expect(report).to_contain_text("✓ lighthouse.md", timeout=ANSWER_TIMEOUT_MS)
    _expect(report).to_contain_text("✗ report.pdf: not a valid PDF")
    _expect(page.locator("#index-panel")).to_contain_text("lighthouse.md")
    page.get_by_role("tab", name="Chat · 问答").click()
    answer = ask(page, "When does the quokka lighthouse keeper light the lamp?")
    assert "seven" in answer
    _expect(page.locator("#sources")).to_contain_text("lighthouse.md")
    # The same name again is refused, not overwritten; the default collection takes no upload.
    page.get_by_role("tab", name="Index · 索引").click()
    page.set_input_files("#upload input[type=file]", str(tmp_path / "lighthouse.md"))
    _expect(report).to_contain_text("already in the collection", timeout=ANSWER_TIMEOUT_MS)
    _choose_collection(page, "default")
    _expect(page.locator("#index-panel")).to_contain_text("create a collection")
    page.get_by_role("tab", name="Chat · 问答").click()


def test_on_a_phone_the_sources_come_right_after_the_answer(page):
    _choose_collection(page, "okapi")
    _expect(page.locator('#chat [data-testid="bot"]').last).to_contain_text("seven")
    ask(page, "When does the quokka lighthouse keeper light the lamp?")
    page.set_viewport_size({"width": 390, "height": 844})
    try:
        page.wait_for_timeout(300)
        chat, sources = page.locator("#chat").bounding_box(), page.locator("#sources").bounding_box()
        assert 0 <= sources["y"] - (chat["y"] + chat["height"]) < 60, (chat, sources)
        assert sources["width"] > 300  # full width, under the chat, not beside it
    finally:
        page.set_viewport_size({"width": 1400, "height": 1000})
