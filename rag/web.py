"""The web chat: a Gradio app over rag/, answering with cited, inspectable sources.

A thin layer: rag.assistant answers (one per collection, rag.collection.Library), rag.chat turns
answers into safe HTML and follow-ups into standalone queries, rag.history keeps conversations
and feedback, rag.auth checks logins; this module only lays out the page and wires events.
An extractive answer is shown whole as soon as it is found; an LLM's reply streams token by token
as the server sends it. rag.upload stores files dropped on the page, and on first start the page
is served at once while the index builds (rag.collection.Library.prepare). Trade-off: a question
sent while an answer streams waits for it (Gradio's "always_last"), and only the latest one
waits. Gradio is imported only when a page is built: importing this module stays cheap for
`rag --help` and the tests that drive the handlers.
No `from __future__ import annotations` here: Gradio finds the `gr.Request` it passes to a
handler by the handler's evaluated annotations, and `gr` is imported inside build_app.

    rag serve [--host 127.0.0.1] [--port 7860] [--auth-file FILE] [--replica]   (or, in a checkout: python app.py)

With --replica the server only reads the index (another process writes it: README "Replicas"):
the page has no upload, delete or refresh, and those calls are refused.
"""

import argparse
import gc
import ipaddress
import os
import sqlite3
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from rag import auth
from rag.answer import language_of
from rag.assistant import REPLICA_NOTE, Assistant, QuestionError, validate_question
from rag.chat import (
    document_choices,
    document_html,
    document_text,
    draft_message,
    escape_html,
    escape_markdown,
    format_answer,
    index_html,
    page_image_html,
    quoted_spans,
    sources_html,
)
from rag.collection import DEFAULT, CollectionError, Library, get, visible_to
from rag.config import REPLICA_HELP, Settings, env_flag
from rag.documents import iter_document_paths
from rag.formats import SUFFIXES
from rag.history import History, NotFound
from rag.history import default_path as history_path
from rag.indexing import IndexError_, read_manifest
from rag.preview import page_preview
from rag.upload import UploadError, corpus_for_upload, remove, store

if TYPE_CHECKING:
    import gradio as gr

EXAMPLES = [
    "How many major scientific and technological achievements were shown at the second forum?",
    "第二届长三角一体化发展高层论坛集中展示了多少项重大科技成果?",
    "The Yuandang Lake water system lies in which two districts?",
    "Who is the chairman of the board of Huali Group Co., Ltd.?",
    "嘉兴市政协主席高玲慧提出了什么建议?",
]
# Our own script, not document text: scrolls the opened document to its first quoted sentence.
SCROLL_TO_FIRST_MARK = """
watch('value', () => {
  const text = element.querySelector('.doc-text');
  const mark = text && text.querySelector('mark');
  if (text) text.scrollTop = mark ? Math.max(0, mark.offsetTop - 40) : 0;
});
"""
CSS = """
.cite { display: inline-block; line-height: 1.3; padding: 0 .3em; border-radius: .35em; font-size: .8em;
        font-weight: 600; background: #ccfbf1; color: #115e59; font-variant-numeric: tabular-nums; }
.cite-list { font-size: .85em; color: #475569; }
code.doc-id { font-size: .85em; }
.sources, .doc-view, .index-info { font-size: .92em; }
.src-empty { color: #64748b; }
.src-query { color: #475569; font-size: .9em; }
.src-abstain { color: #9a3412; font-weight: 600; }
.src-heading { font-weight: 600; }
.src-card { border: 1px solid #e2e8f0; border-radius: .5em; padding: .6em .8em; margin: .5em 0; }
.src-title { font-weight: 600; }
.src-meta { color: #64748b; font-size: .85em; margin: .2em 0 .4em; }
/* pre-line keeps the documents' line breaks but drops their indentation */
.src-text, .doc-text { white-space: pre-line; line-height: 1.5; }
.doc-text { position: relative; max-height: 420px; overflow-y: auto; border-top: 1px solid #e2e8f0; padding-top: .4em; }
.src-relevance { font-size: .85em; color: #115e59; }
.src-details { color: #64748b; font-size: .8em; }
sup.cite { cursor: pointer; }
@keyframes src-flash { from { background: #fde68a; } to { background: transparent; } }
.src-card.flash { animation: src-flash 1.6s ease-out; outline: 2px solid #14b8a6; }
#startup .starting { background: #f0fdfa; border: 1px solid #99f6e4; border-radius: .5em; padding: .5em .8em; }
#startup .failed { background: #fff7ed; border: 1px solid #fdba74; border-radius: .5em; padding: .5em .8em; }
.upload-report li.refused { color: #9a3412; }
/* On a phone the two columns stack: the chat column's parts become items of the row, so the
   sources can sit right under the answer instead of under the input box and the examples. */
@media (max-width: 720px) {
  #main-row { flex-direction: column; }
  #chat-column, #sources-column { display: contents; }
  #chat-column > *, #sources-column > * { order: 5; }
  #main-row #chat { order: 1; }
  #main-row #sources { order: 2; }
  #main-row #hint { order: 3; }
  #main-row #comment-row, #main-row #ask-row { order: 4; }
  #chat, #sources, #hint, #comment-row, #ask-row, #examples { width: 100%; }
}
.sources mark, .doc-view mark { background: #fde68a; padding: 0 .1em; border-radius: .2em; }
.page-image img { max-width: 100%; border: 1px solid #e2e8f0; margin-top: .4em; }
.index-info table { width: 100%; border-collapse: collapse; border: none; }
.index-info td, .index-info th { border: none; border-bottom: 1px solid #e2e8f0; padding: .3em .5em; text-align: left; }
.index-info td.num { text-align: right; }
#hint .hint { color: #9a3412; margin: .2em 0; }
"""

# Our own script, run once when the page loads (launch(js=...)); it touches only our elements.
# - `[n]` in an answer scrolls to its source card and flashes it.
# - Copy puts the answer as the reader sees it on the clipboard (text, [n], the numbered source
#   list), not the message's markup: Gradio's own copy writes the stored HTML.
# - A message's aria-label is its text, not its markup, so a screen reader does not read tags.
PAGE_JS = r"""
() => {
  const number = (el) => (el.textContent || '').replace(/[^0-9]/g, '');
  const messageOf = (button) => {
    // Gradio puts a message's buttons in a sibling after its row: the row just before them.
    let row = button.closest('[class*="message-buttons"]');
    while (row && !row.matches('.message-row')) row = row.previousElementSibling;
    return row && row.querySelector('.message-content');
  };
  window.ragCopied = null;
  // The question as it was when sent (Enter or Ask), read before Gradio dispatches the event: on a
  // slow machine the user's next keystrokes can land first, and CLEAR_ON_SEND must keep them.
  window.ragSending = null;
  document.addEventListener('keydown', (event) => {
    const box = event.target instanceof Element && event.target.closest('#question textarea');
    if (box && event.key === 'Enter' && !event.shiftKey && !event.isComposing) window.ragSending = box.value;
  }, true);
  document.addEventListener('click', (event) => {
    if (event.target instanceof Element && event.target.closest('#ask')) {
      const box = document.querySelector('#question textarea');
      if (box) window.ragSending = box.value;
    }
  }, true);
  document.addEventListener('click', (event) => {
    const target = event.target instanceof Element ? event.target : null;
    if (!target) return;
    const cite = target.closest('#chat sup.cite');
    if (cite) {
      const card = [...document.querySelectorAll('#sources .src-card')]
        .find((c) => number(c.querySelector('.cite') || c) === number(cite));
      if (card) {
        card.scrollIntoView({block: 'center'});
        card.classList.remove('flash');
        void card.offsetWidth;  // restart the animation on a second click
        card.classList.add('flash');
      }
      return;
    }
    const button = target.closest('#chat button');
    const label = button && (button.getAttribute('aria-label') || button.title || '');
    if (button && /^copy/i.test(label) && !/all|conversation/i.test(label)) {
      const message = messageOf(button);
      if (!message) return;
      event.stopPropagation();
      event.preventDefault();
      const text = message.innerText.replace(/\n{3,}/g, '\n\n').trim();
      window.ragCopied = text;
      if (navigator.clipboard) navigator.clipboard.writeText(text).catch(() => {});
    }
  }, true);
  const plainLabels = () => {
    for (const el of document.querySelectorAll('#chat [data-testid="bot"], #chat [data-testid="user"]')) {
      const label = el.getAttribute('aria-label') || '';
      const at = label.indexOf('message: ');
      const text = (el.textContent || '').replace(/\s+/g, ' ').trim();
      const plain = label.slice(0, at + 9) + text;
      if (at >= 0 && text && label !== plain) el.setAttribute('aria-label', plain);
    }
  };
  new MutationObserver(plainLabels).observe(document.body, {subtree: true, childList: true, attributes: true,
    attributeFilter: ['aria-label']});
}
"""


# Run in the page as a question is sent, before it goes to the server: empties the box at once, so
# nothing typed after pressing Enter is lost to a late "clear" from the server. Gradio runs it when
# the event runs, so a question deferred behind the current answer is read from the box first.
# Sends the question as it was at Enter or Ask (PAGE_JS records it) and takes only that text out
# of the box: anything typed after it, before this runs, stays to be asked next.
CLEAR_ON_SEND = """
(...args) => {
  const box = document.querySelector('#question textarea');
  const sent = window.ragSending !== null && window.ragSending !== undefined ? window.ragSending : args[0];
  window.ragSending = null;
  if (box && sent && box.value.startsWith(sent)) {
    box.value = box.value.slice(sent.length);
    box.dispatchEvent(new Event('input', {bubbles: true}));
  }
  args[0] = sent;
  return args;
}
"""


def launch_options(settings: Settings) -> dict:
    """Gradio's launch settings that keep the app safe to serve.

    No allowed_paths: the page serves no files of ours; documents reach it only as escaped text.
    Gradio's /gradio_api/upload takes files for the upload box into its own temporary folder;
    anything over the upload limit is refused there, before rag.upload checks and stores it. The
    traffic summary (/monitoring/summary) is off.
    """
    return {"max_file_size": int(settings.max_upload_mb * 2**20), "enable_monitoring": False}


def _user(request: "gr.Request | None") -> str | None:
    """Who is asking: the login name, or None when the app runs without login."""
    return getattr(request, "username", None) or None


def _hint(text: str) -> str:
    return f'<p class="hint" role="alert">{escape_html(text)}</p>' if text else ""


def _upload_report(stored: list[str], refused: list[tuple[str, str]], report) -> str:
    """What happened to each dropped file, and what the refresh then skipped, with reasons."""
    items = [f'<li class="stored">✓ {escape_html(name)}</li>' for name in stored]
    items += [
        f'<li class="refused">✗ {escape_html(name)}: {escape_html(why.removeprefix(name + ": "))}</li>'
        for name, why in refused
    ]
    items += [
        f'<li class="refused">✗ {escape_html(e.doc_id)} was stored but not indexed: {escape_html(e.reason)}</li>'
        for e in (report.skipped if report is not None else [])
        if e.doc_id in stored
    ]
    summary = f"<p>{escape_html(report.summary())}</p>" if report is not None else ""
    return f'<div class="upload-report"><ul>{"".join(items)}</ul>{summary}</div>'


def conversation_choices(history: History, user: str | None, collection: str) -> list[tuple[str, int]]:
    return [(c.title, c.id) for c in history.conversations(user or "", collection)]


def build_app(library: Library, history: History, collection: str = DEFAULT) -> "gr.Blocks":
    """The chat page over `library`'s collections, keeping conversations in `history`.

    `collection` is the one a browser starts on; the caller sets the queue and launches it.
    """
    import gradio as gr

    keep = gr.skip()
    empty_sources = sources_html(None)
    replica = bool(getattr(library, "replica", False))  # reads an index another process writes
    upload_mb = library.base.max_upload_mb if hasattr(library, "base") else Settings().max_upload_mb

    def fresh_conversation():
        """Outputs of a conversation not started yet: no messages, no sources, no follow-up context."""
        return gr.update(value=[], feedback_value=[]), [], [], None, empty_sources, {}, "", ""

    def respond(
        message: str,
        chat: list[dict],
        asked: list[str],
        name: str,
        conversation: int | None,
        message_ids: list[int | None],
        request: gr.Request,
    ):
        """Stream the answer to `message` into the chat; fill the sources panel and save it when done.

        Outputs: question, chatbot, sources, picker, asked, spans, hint, conversation, message_ids,
        conversations. A refused question stays in the box with a hint; it never enters the chat.
        """
        user = _user(request)

        def refuse(text: str):
            # The page emptied the box when the question was sent (CLEAR_ON_SEND): put it back to be fixed.
            return (message, keep, keep, keep, keep, keep, _hint(text)) + (keep,) * 3

        if not (message or "").strip():
            yield refuse("Type a question first. · 请先输入问题。")
            return
        try:
            question = validate_question(message)  # before it is shown: a 20,000-character paste is not echoed
            assistant = library.assistant(name, user)
        except (QuestionError, CollectionError, IndexError_, FileNotFoundError) as exc:
            yield refuse(str(exc))
            return
        chat = [*chat, {"role": "user", "content": escape_markdown(question)}, {"role": "assistant", "content": "…"}]
        # The page emptied the box as the question was sent; no update from here touches it, so what
        # the user types meanwhile stays (and is asked next if they press Enter).
        yield (keep, chat, keep, keep, keep, keep, "") + (keep,) * 3
        language = language_of(question)
        answer, draft = None, ""
        try:
            # With an LLM configured the reply streams as drafted, then is replaced by the verified
            # answer (or the extractive fallback); without one there is only the final Answer.
            for item in assistant.ask_stream(question, history=asked):
                if isinstance(item, str):
                    draft += item
                    chat[-1] = {"role": "assistant", "content": draft_message(draft, language)}
                    yield (keep, chat) + (keep,) * 8
                else:
                    answer = item
        except (QuestionError, IndexError_) as exc:
            yield refuse(str(exc))[:1] + (chat[:-2],) + refuse(str(exc))[2:]
            return
        final = format_answer(answer)  # shown whole, with its sources, in the update below
        chat[-1] = {"role": "assistant", "content": final}
        hint, saved = "", None
        try:
            if conversation is None:
                conversation = history.create(user or "", name, question).id
            citations = answer.to_json()["citations"]
            saved = history.add_message(conversation, user or "", question, answer.answer, citations, final)
        except (sqlite3.Error, NotFound, OSError) as exc:
            hint = _hint(f"The answer is shown but could not be saved: {exc}")
        cited = [c.doc_id for c in answer.citations or answer.nearest]
        picker = gr.update(choices=document_choices(assistant.index), value=cited[0] if cited else None)
        listed = gr.update(choices=conversation_choices(history, user, name), value=conversation)
        yield (
            keep,
            chat,
            sources_html(answer, asked=question),
            picker,
            [*asked, question],
            quoted_spans(answer),
            hint,
            conversation,
            [*message_ids, saved],
            listed,
        )

    def open_conversation(conversation: int | None, name: str, request: gr.Request):
        """Outputs: chatbot, asked, message_ids, conversation, sources, spans, viewer, hint."""
        if conversation is None:
            return fresh_conversation()
        try:
            found = history.get(conversation, _user(request) or "")
            library.collection(found.collection, _user(request))
            messages = history.messages(conversation, _user(request) or "")
        except (NotFound, CollectionError):
            return (*fresh_conversation()[:-1], _hint("That conversation no longer exists."))
        chat = []
        for m in messages:
            chat += [
                {"role": "user", "content": escape_markdown(m.question)},
                {"role": "assistant", "content": m.display},
            ]
        # The thumbs as they were given: one entry per answer.
        thumbs = [{1: "Like", -1: "Dislike"}.get(m.rating) for m in messages]
        chatbot_value = gr.update(value=chat, feedback_value=thumbs)
        return (
            chatbot_value,
            [m.question for m in messages],
            [m.id for m in messages],
            conversation,
            empty_sources,
            {},
            "",
            "",
        )

    def switch_collection(name: str, request: gr.Request):
        """Show `name`'s latest conversation, its index and documents. Outputs: the conversation's,
        then conversations, index panel, picker."""
        user = _user(request)
        try:
            library.collection(name, user)
        except CollectionError as exc:
            return (*fresh_conversation()[:-1], _hint(str(exc)), gr.update(choices=[], value=None), "", keep)
        choices = conversation_choices(history, user, name)
        latest = choices[0][1] if choices else None
        panel, picker = show_index(name, request)
        return (
            *open_conversation(latest, name, request),
            gr.update(choices=choices, value=latest),
            panel,
            picker,
        )

    def load_page(request: gr.Request):
        """The collections this user may see, and the starting one's latest conversation."""
        user = _user(request)
        names = [c.name for c in visible_to(user)]
        start = collection if collection in names else DEFAULT
        return gr.update(choices=names, value=start), *switch_collection(start, request)

    def new_conversation(name: str, request: gr.Request):
        """Outputs: the conversation's, then the conversations list with nothing selected."""
        choices = conversation_choices(history, _user(request), name)
        return *fresh_conversation(), gr.update(choices=choices, value=None)

    def rename_conversation(conversation: int | None, title: str, name: str, request: gr.Request):
        if conversation is None:
            return keep, keep, _hint("Ask a question first: a conversation is saved with its first answer.")
        try:
            history.rename(conversation, _user(request) or "", title)
        except (NotFound, ValueError) as exc:
            return keep, keep, _hint(str(exc))
        return gr.update(choices=conversation_choices(history, _user(request), name), value=conversation), "", ""

    def delete_conversation(conversation: int | None, name: str, request: gr.Request):
        if conversation is not None:
            try:
                history.delete(conversation, _user(request) or "")
            except NotFound:
                pass  # already gone (another tab): the outcome the user asked for
        return new_conversation(name, request)

    def rate(message_ids: list[int | None], request: gr.Request, data: gr.LikeData):
        """👍/👎 on an answer. Outputs: hint, the rated message's id, the comment row."""
        index = data.index if isinstance(data.index, int) else data.index[0]
        exchange = index // 2  # the chat alternates question, answer
        message_id = message_ids[exchange] if 0 <= exchange < len(message_ids) else None
        # Gradio sends True for 👍, False for 👎, and "" when the chosen thumb is clicked again.
        rating = {True: 1, False: -1, "": 0}.get(data.liked)
        if message_id is None or rating is None:
            return _hint("This answer was not saved, so it cannot be rated."), None, gr.update(visible=False)
        try:
            if rating == 0:
                history.unrate(message_id, _user(request) or "")
                return _hint("Rating withdrawn. · 已撤销。"), None, gr.update(visible=False)
            history.rate(message_id, _user(request) or "", rating)
        except (NotFound, sqlite3.Error) as exc:
            return _hint(f"The rating could not be saved: {exc}"), None, gr.update(visible=False)
        thanks = "Thanks! What was wrong? (optional) · 哪里不对?(可选)" if rating < 0 else "Thanks! · 谢谢!"
        return _hint(thanks), message_id, gr.update(visible=True)

    def send_comment(message_id: int | None, comment: str, request: gr.Request):
        """Outputs: hint, comment box, comment row."""
        if message_id is None or not (comment or "").strip():
            return _hint("Rate an answer with 👍 or 👎, then add a comment."), keep, keep
        try:
            history.comment(message_id, _user(request) or "", comment)
        except (NotFound, sqlite3.Error) as exc:
            return _hint(str(exc)), keep, keep
        return _hint("Comment saved. · 已保存。"), "", gr.update(visible=False)

    def open_document(doc_id: str | None, spans: dict, name: str, request: gr.Request) -> str:
        if not doc_id:
            return ""
        try:
            assistant = library.assistant(name, _user(request))
        except (CollectionError, IndexError_, FileNotFoundError) as exc:
            return _hint(str(exc))
        index, settings = assistant.index, assistant.settings
        text = document_text(index, settings.corpus_dir, doc_id, settings.ocr_languages, settings.cache_dir)
        title = index.documents.get(doc_id, {}).get("title", doc_id)
        quoted = [tuple(s) for s in spans.get(doc_id, [])]
        # A PDF's quoted page as an image too, the quote highlighted on it.
        preview = text and page_preview(
            index.documents,
            settings.corpus_dir,
            doc_id,
            text,
            quoted,
            ocr_languages=settings.ocr_languages,
            ocr_cache_dir=settings.cache_dir,
        )
        return document_html(doc_id, title, text, quoted) + (page_image_html(preview) if preview else "")

    def show_index(name: str, request: gr.Request):
        """Outputs: the index panel, the document picker."""
        try:
            index = library.assistant(name, _user(request)).index
        except (CollectionError, IndexError_, FileNotFoundError) as exc:
            return _hint(str(exc)), gr.update(choices=[], value=None)
        note = ""
        if replica:
            note = f'<p class="upload-note">{escape_html(REPLICA_NOTE)}</p>'
        elif name == DEFAULT:
            note = (
                '<p class="upload-note">The default collection is the bundled (or --corpus) folder: to add '
                "documents from this page, create a collection (<code>rag collection create NAME</code>) "
                "and upload into it. · 默认文档集不能上传，请先创建文档集。</p>"
            )
        return note + index_html(index.manifest), gr.update(choices=document_choices(index), value=None)

    def refresh(name: str, request: gr.Request, progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's idiom)
        if replica:
            return keep, keep, REPLICA_NOTE
        progress(0, desc="Reading documents, embedding what changed…")
        try:
            report = library.assistant(name, _user(request)).refresh()
        except (OSError, ValueError, RuntimeError) as exc:
            return keep, keep, f"Refresh failed; still answering from the previous index.\n{exc}"
        summary = report.summary() if report.changed or report.skipped else "The index is up to date."
        return *show_index(name, request), summary

    def upload(paths: list[str] | None, name: str, request: gr.Request, progress=gr.Progress()):  # noqa: B008
        """Store the dropped files in the collection's folder, one by one, then refresh its index.

        Outputs: the upload report, the upload box (emptied), the index panel, the delete picker.
        Each file is stored or refused on its own, with its reason; the refresh runs once after them.
        """
        paths = [Path(p) for p in paths or []]
        user = _user(request)
        if not paths:
            return keep, keep, keep, keep
        if replica:
            return _upload_report([], [(p.name, REPLICA_NOTE) for p in paths], None), None, keep, keep, keep
        try:
            target = corpus_for_upload(library.collection(name, user), library.base)
            library.assistant(name, user)  # not built yet (first start): say so before storing anything
        except (UploadError, CollectionError, IndexError_, FileNotFoundError) as exc:
            return _upload_report([], [(p.name, str(exc)) for p in paths], None), None, keep, keep, keep
        stored, refused = [], []
        limit = int(library.base.max_upload_mb * 2**20)
        for i, path in enumerate(paths):
            progress((i, len(paths)), desc=f"Storing {path.name}", unit="files")
            try:
                if path.stat().st_size > limit:  # before reading it into memory
                    raise UploadError(f"{path.name} is over the {library.base.max_upload_mb:g} MB limit")
                stored.append(store(target, path.name, path.read_bytes(), limit).name)
            except (UploadError, OSError) as exc:
                refused.append((path.name, str(exc)))
        report = None
        if stored:
            progress((len(paths), len(paths)), desc="Indexing the new documents…")
            try:
                report = library.assistant(name, user).refresh()
            except (OSError, ValueError, RuntimeError, CollectionError) as exc:
                refused.append(("(index)", f"stored, but the refresh failed; answering from the previous index: {exc}"))
        panel, docs = show_index(name, request)
        return _upload_report(stored, refused, report), None, panel, docs, docs

    def ask_delete(doc_id: str | None, name: str, request: gr.Request):
        """First step of deleting a document: name it and show the confirmation. Outputs: status, confirm row."""
        if replica:
            return _hint(REPLICA_NOTE), gr.update(visible=False)
        if not doc_id:
            return _hint("Choose a document to delete first."), gr.update(visible=False)
        try:
            corpus_for_upload(library.collection(name, _user(request)), library.base)
        except (UploadError, CollectionError) as exc:
            return _hint(str(exc)), gr.update(visible=False)
        question = f"Delete {doc_id} from the collection {name}? Its file is removed from the folder. · 确定删除?"
        return f'<p class="confirm">{escape_html(question)}</p>', gr.update(visible=True)

    def delete_document(doc_id: str | None, name: str, request: gr.Request):
        """Outputs: status, confirm row, index panel, delete picker."""
        if replica:
            return _hint(REPLICA_NOTE), gr.update(visible=False), keep, keep, keep
        user = _user(request)
        try:
            target = corpus_for_upload(library.collection(name, user), library.base)
            if not doc_id:
                raise UploadError("Choose a document to delete first.")
            remove(target, doc_id)
            report = library.assistant(name, user).refresh(allow_empty=True)
        except (UploadError, CollectionError, OSError, ValueError, RuntimeError) as exc:
            return _hint(str(exc)), gr.update(visible=False), keep, keep, keep
        done = f"Deleted {doc_id}. {report.summary()}"
        panel, docs = show_index(name, request)
        return f"<p>{escape_html(done)}</p>", gr.update(visible=False), panel, docs, docs

    def startup_status(name: str, request: gr.Request):
        """First start: how far the index build is. Outputs: banner, timer, index panel, picker, delete picker.

        Polled every second until the collection answers; then the banner goes, the timer stops,
        and the panels that waited for the index are filled.
        """
        status = library.status(name) if hasattr(library, "status") else None
        if status is not None:
            text = f"Building the index: {status}. Questions are answered when it is ready. · 正在建立索引……"
            if replica:
                text = f"Waiting for the index: {status}. Questions are answered when it is ready. · 正在等待索引……"
            return f'<p class="starting" role="status">{escape_html(text)}</p>', keep, keep, keep, keep
        failed = library.failure(name) if hasattr(library, "failure") else None
        panel, doc_picker = show_index(name, request)
        if failed:
            text = f"The index could not be built: {failed}"
            return f'<p class="failed" role="alert">{escape_html(text)}</p>', gr.update(active=False), panel, keep, keep
        # An empty marker, so a test (or a script) can tell "ready" from "not polled yet".
        return '<div class="index-ready"></div>', gr.update(active=False), panel, doc_picker, doc_picker

    # analytics_enabled=False: offline means no telemetry and no version check against PyPI.
    with gr.Blocks(title="Ask your documents · 问你的文档", analytics_enabled=False) as demo:
        asked = gr.State([])  # the user's questions as typed: what follow-ups are read against
        spans = gr.State({})  # doc_id -> quoted offsets of the latest answer, for the viewer
        conversation = gr.State(None)  # the open conversation's id; None until its first answer
        message_ids = gr.State([])  # the saved id of each answer in the chat, for 👍/👎
        rated = gr.State(None)  # the answer the comment box is about
        with gr.Sidebar(label="Conversations", elem_id="sidebar"):
            # Custom values: the page lists only the collections a user may see (load_page), so an API
            # client never got the others as choices; every handler checks access by name anyway.
            picker_collection = gr.Dropdown(
                choices=[collection],
                value=collection,
                label="Collection · 文档集",
                elem_id="collection",
                allow_custom_value=True,
            )
            new_chat = gr.Button("New conversation · 新对话", size="sm", variant="secondary", elem_id="new-chat")
            conversations = gr.Radio(choices=[], label="Conversations · 对话", elem_id="conversations")
            with gr.Row():
                rename_box = gr.Textbox(placeholder="New title · 新标题", show_label=False, scale=3, elem_id="title")
                rename_btn = gr.Button("Rename", size="sm", scale=1, min_width=60, elem_id="rename")
            delete_btn = gr.Button("Delete conversation · 删除", size="sm", variant="stop", elem_id="delete-chat")
        startup = gr.HTML("", elem_id="startup")
        startup_timer = gr.Timer(1.0)
        gr.Markdown(
            "## Ask your documents · 问你的文档\n"
            "Answers quote your documents and cite them; nothing leaves this machine. "
            "Ask in English or Chinese, follow-ups included. · 用中文或英文提问，答案引用原文并标注出处。"
        )
        with gr.Tabs():
            with gr.Tab("Chat · 问答"):
                with gr.Row(equal_height=False, elem_id="main-row"):
                    with gr.Column(scale=5, elem_id="chat-column"):
                        chatbot = gr.Chatbot(
                            label="Chat",
                            show_label=False,
                            height=520,
                            elem_id="chat",
                            # Messages are escaped by rag.chat; as a second line of defence keep
                            # Gradio's sanitiser on, allow no custom tags and no LaTeX.
                            sanitize_html=True,
                            allow_tags=False,
                            latex_delimiters=[],
                            feedback_options=("Like", "Dislike"),
                            buttons=["copy"],
                        )
                        hint = gr.HTML("", elem_id="hint")
                        with gr.Row(visible=False, elem_id="comment-row") as comment_row:
                            comment = gr.Textbox(
                                placeholder="What was wrong or missing? · 哪里不对或缺少什么?",
                                show_label=False,
                                scale=6,
                                elem_id="comment",
                                max_lines=3,
                            )
                            send_comment_btn = gr.Button("Send · 发送", scale=1, elem_id="send-comment")
                        with gr.Row(elem_id="ask-row"):
                            question = gr.Textbox(
                                placeholder="Ask a question · 输入问题",
                                show_label=False,
                                scale=6,
                                elem_id="question",
                                max_lines=4,
                            )
                            send = gr.Button("Ask · 提问", variant="primary", scale=0, min_width=110, elem_id="ask")
                            stop = gr.Button("Stop · 停止", variant="stop", scale=0, min_width=90, elem_id="stop")
                        examples = gr.Examples(EXAMPLES, inputs=question, label="Examples · 示例", elem_id="examples")
                    with gr.Column(scale=4, elem_id="sources-column"):
                        sources = gr.HTML(empty_sources, elem_id="sources", label="Sources")
                        gr.Markdown("**Full document · 全文**")
                        with gr.Row(equal_height=True):
                            picker = gr.Dropdown(
                                choices=[], show_label=False, container=False, scale=4, elem_id="doc-picker"
                            )
                            open_btn = gr.Button("Open · 打开", scale=1, min_width=100, elem_id="open-doc")
                        viewer = gr.HTML("", elem_id="document", js_on_load=SCROLL_TO_FIRST_MARK)
            with gr.Tab("Index · 索引"):
                # A replica writes nothing: no upload, delete or refresh (its handlers refuse them too),
                # and the index panel says where documents are added instead.
                writes = not replica
                gr.Markdown(
                    "**Add documents · 上传文档** to the chosen collection: "
                    f"{', '.join(sorted(SUFFIXES))}; up to {upload_mb:g} MB each.",
                    visible=writes,
                )
                upload_box = gr.File(
                    file_count="multiple",
                    file_types=sorted(SUFFIXES),
                    label="Drop files here or click to choose · 拖放或选择文件",
                    elem_id="upload",
                    height=140,
                    visible=writes,
                )
                upload_report = gr.HTML("", elem_id="upload-report")
                with gr.Row(equal_height=True, visible=writes):
                    delete_pick = gr.Dropdown(
                        choices=[], show_label=False, container=False, scale=4, elem_id="delete-pick"
                    )
                    delete_ask = gr.Button("Delete document · 删除文档", variant="stop", scale=1, elem_id="delete-doc")
                with gr.Row(visible=False, elem_id="delete-confirm") as delete_confirm:
                    delete_yes = gr.Button("Yes, delete it · 确认删除", variant="stop", elem_id="delete-yes")
                    delete_no = gr.Button("Cancel · 取消", elem_id="delete-no")
                delete_status = gr.HTML("", elem_id="delete-status")
                index_panel = gr.HTML("", elem_id="index-panel")
                gr.Markdown(
                    "Refreshing re-reads the collection's folder and embeds only what changed. "
                    "The chat keeps answering from the current index until the new one is complete. · "
                    "刷新时只重新嵌入有变化的文档，完成前问答继续使用当前索引。",
                    visible=writes,
                )
                refresh_btn = gr.Button(
                    "Refresh index · 刷新索引", variant="primary", elem_id="refresh", visible=writes
                )
                refresh_status = gr.Textbox(
                    label="Last refresh", interactive=False, lines=3, elem_id="refresh-status", visible=writes
                )

        ask_inputs = [question, chatbot, asked, picker_collection, conversation, message_ids]
        outputs = [question, chatbot, sources, picker, asked, spans, hint, conversation, message_ids, conversations]
        opened = [chatbot, asked, message_ids, conversation, sources, spans, viewer, hint]
        # The chat runs in the default concurrency group; the refresh gets its own single slot,
        # so a long re-embedding never takes the chat's slots and answers keep coming meanwhile.
        # One event for the button and Enter: a question sent while an answer is being written waits
        # for it and is asked next ("always_last"), rather than being dropped or answered at once
        # into the same chat.
        asking = gr.on(
            [send.click, question.submit],
            respond,
            ask_inputs,
            outputs,
            trigger_mode="always_last",
            js=CLEAR_ON_SEND,
        )
        from_example = examples.load_input_event.then(respond, ask_inputs, outputs, js=CLEAR_ON_SEND)  # a click asks it
        # Stop ends the answer being written; the chat keeps what was shown, and nothing is saved.
        stop.click(None, None, None, cancels=[asking, from_example])
        open_btn.click(open_document, [picker, spans, picker_collection], viewer)
        # .input, not .change: only the user's own choice, not the lists this code updates.
        conversations.input(open_conversation, [conversations, picker_collection], opened)
        picker_collection.input(switch_collection, picker_collection, [*opened, conversations, index_panel, picker])
        new_chat.click(new_conversation, picker_collection, [*opened, conversations])
        # The trash icon: a cleared chat also forgets its sources and the questions follow-ups read.
        chatbot.clear(new_conversation, picker_collection, [*opened, conversations])
        rename_btn.click(
            rename_conversation, [conversation, rename_box, picker_collection], [conversations, rename_box, hint]
        )
        delete_btn.click(delete_conversation, [conversation, picker_collection], [*opened, conversations])
        chatbot.like(rate, message_ids, [hint, rated, comment_row])
        send_comment_btn.click(send_comment, [rated, comment], [hint, comment, comment_row])
        comment.submit(send_comment, [rated, comment], [hint, comment, comment_row])
        refresh_btn.click(
            refresh,
            picker_collection,
            [index_panel, picker, refresh_status],
            concurrency_limit=1,
            concurrency_id="refresh",
        )
        documents = [index_panel, picker, delete_pick]
        upload_box.upload(
            upload,
            [upload_box, picker_collection],
            [upload_report, upload_box, *documents],
            concurrency_limit=1,
            concurrency_id="refresh",
        )
        delete_ask.click(ask_delete, [delete_pick, picker_collection], [delete_status, delete_confirm])
        delete_no.click(lambda: ("", gr.update(visible=False)), None, [delete_status, delete_confirm])
        delete_yes.click(
            delete_document,
            [delete_pick, picker_collection],
            [delete_status, delete_confirm, *documents],
            concurrency_limit=1,
            concurrency_id="refresh",
        )
        startup_timer.tick(
            startup_status, picker_collection, [startup, startup_timer, *documents], show_progress="hidden"
        )
        demo.load(load_page, None, [picker_collection, *opened, conversations, index_panel, picker])
    return demo


def _open_later(library: Library, first: threading.Thread, name: str, prog: str) -> None:
    """Open collection `name` once the default one is ready (they share its embedder)."""
    first.join()
    try:
        library.assistant(name, None)
    except (CollectionError, FileNotFoundError, OSError, ValueError, RuntimeError) as exc:  # shown again in the page
        print(f"{prog}: warning: collection {name!r}: {exc}", file=sys.stderr)


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name that may resolve anywhere


def main(argv: list[str] | None = None, settings: Settings | None = None, prog: str = "rag serve") -> int:
    """Build or refresh the index, then serve the chat until interrupted (`rag serve`, `python app.py`)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="The web chat over your documents (builds or refreshes the index first).",
        epilog=f"examples:\n  {prog}\n  RAG_CORPUS_DIR=~/my-docs {prog} --port 8080",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default=os.environ.get("RAG_HOST", "127.0.0.1"), help="[RAG_HOST]")
    parser.add_argument("--port", type=int, default=int(os.environ.get("RAG_PORT", "7860")), help="[RAG_PORT]")
    parser.add_argument("--auth-file", default=None, metavar="FILE", help="users file (rag user add) [RAG_AUTH_FILE]")
    parser.add_argument(
        "--insecure-open", action="store_true", help="listen on a non-loopback --host without a users file"
    )
    parser.add_argument("--replica", action="store_true", default=env_flag("RAG_REPLICA"), help=REPLICA_HELP)
    args = parser.parse_args(argv)

    users_file = Path(args.auth_file).expanduser() if args.auth_file else auth.auth_file()
    if users_file is None and not is_loopback(args.host) and not args.insecure_open:
        print(
            f"{prog}: refusing to serve on {args.host} without login: anyone who reaches it could read the "
            "documents. Set RAG_AUTH_FILE (rag user add NAME), or listen on 127.0.0.1, or pass --insecure-open.",
            file=sys.stderr,
        )
        return 2
    if users_file is not None:
        try:
            if not auth.load_users(users_file):
                raise auth.AuthError(f"the users file {users_file} has no users: add one with `rag user add NAME`")
        except (OSError, auth.AuthError) as exc:
            print(f"{prog}: {exc}", file=sys.stderr)  # asked for a login: never fall back to an open app
            return 1

    base = settings or Settings.from_env()
    try:
        start = get(base.collection)
    except CollectionError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1
    default_settings = get(DEFAULT).settings(base)
    has_index = read_manifest(default_settings.index_dir) is not None
    corpus = default_settings.corpus_dir
    if args.replica:
        print(
            f"{prog}: replica of the index in {default_settings.index_dir}, which is never written here; "
            f"it is looked at every {default_settings.reload_check_s:g} s and a new generation swapped in",
            file=sys.stderr,
        )
    elif not corpus.is_dir() or next(iter_document_paths(corpus), None) is None:
        problem = f"the corpus folder {corpus} {'is empty' if corpus.is_dir() else 'does not exist'}"
        if not has_index:
            print(f"{prog}: cannot build the index: {problem}", file=sys.stderr)
            return 1
        # As `rag ask` does: the index still answers, and is kept for when the folder is back.
        print(f"{prog}: warning: {problem}; answering from the existing index", file=sys.stderr)
    try:
        history = History()
    except (OSError, sqlite3.Error) as exc:
        print(f"{prog}: cannot open the conversation history {history_path()}: {exc}", file=sys.stderr)
        return 1
    library = Library(base, replica=args.replica, watch=True)

    def build(report) -> Assistant:
        """The default collection's Assistant with its index current, then warmed up (a thread's work)."""
        report("loading the embedding model")
        assistant = Assistant(default_settings)
        if corpus.is_dir() and next(iter_document_paths(corpus), None) is not None:
            report("reading the documents and embedding what changed")
            refreshed = assistant.ensure_index()
            if refreshed is not None:
                print(f"index refreshed: {refreshed.summary()}", file=sys.stderr)
        report("loading the index and the answer judge")
        assistant.warm_up()  # what the first question would wait for
        return assistant

    def follow(report) -> Assistant:
        """A replica's default Assistant: it waits for the index another process builds, then warms up."""
        report("loading the embedding model")
        assistant = Assistant(default_settings, read_only=True)
        report("loading the index")
        assistant.wait_for_index(report)  # as long as it takes, saying why in the page and on stderr
        report("loading the answer judge")
        assistant.warm_up()
        return assistant

    # No cyclic garbage collection while starting: its passes over the objects Gradio's import
    # creates took 0.55-0.7 s of a 2.1-3.0 s import; it is back on once the page is served.
    collecting = gc.isenabled()
    gc.disable()
    import gradio as gr

    demo = build_app(library, history, start.name)
    # Chosen from bench/load.py (20 simulated users, 2 cores; bench/RESULTS.md "Load"): with 2
    # answers at a time one core idled while each answer held its slot ~0.5 s replaying its
    # "typing" (gone since); 4 raised throughput from 3.1 to 5.4 answers/s. A queue of 16 refused
    # a third of the requests of 20 users (and the Refresh button, which shares it); 64 refused
    # none and still bounds the wait so overload gets a clear "queue is full" rather than a hung chat.
    demo.queue(default_concurrency_limit=4, max_size=64)
    theme = gr.themes.Soft(primary_hue="teal", neutral_hue="slate")
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        theme=theme,
        css=CSS,
        footer_links=[],
        prevent_thread_lock=True,
        auth=auth.login_check(users_file) if users_file else None,
        auth_message="Ask your documents · 问你的文档" if users_file else None,
        js=PAGE_JS,
        **launch_options(base),
    )
    if collecting:
        gc.freeze()  # what starting created lives as long as the server: not scanned again
        gc.enable()
    # The page is up at once; the index is built (or checked) and loaded meanwhile, its progress
    # shown in the page, and the other collection a browser starts on is opened after it.
    builder = library.prepare(DEFAULT, follow if args.replica else build)
    if start.name != DEFAULT:
        threading.Thread(target=_open_later, args=(library, builder, start.name, prog), daemon=True).start()
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m rag.web"))
