"""The web chat: a Gradio app over rag/, answering with cited, inspectable sources.

A thin layer: rag.assistant answers, rag.chat turns answers into safe HTML and follow-ups into
standalone queries; this module only lays out the page and wires events. Trade-off: the answer is
computed whole and then streamed to the page, so streaming shows progress but does not make
the first word arrive sooner. Gradio is imported only when a page is built: importing this module
stays cheap for `rag --help` and the tests that drive the handlers.

    rag serve [--host 127.0.0.1] [--port 7860]     (or, in a checkout: python app.py)
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import threading
import time
from typing import TYPE_CHECKING

from rag.answer import language_of
from rag.assistant import Assistant, QuestionError
from rag.chat import (
    document_choices,
    document_html,
    document_text,
    draft_message,
    escape_markdown,
    format_answer,
    index_html,
    page_image_html,
    quoted_spans,
    sources_html,
    stream_answer,
)
from rag.config import Settings
from rag.indexing import IndexError_, read_manifest
from rag.preview import page_preview

if TYPE_CHECKING:
    import gradio as gr

EXAMPLES = [
    "How many major scientific and technological achievements were shown at the second forum?",
    "第二届长三角一体化发展高层论坛集中展示了多少项重大科技成果?",
    "The Yuandang Lake water system lies in which two districts?",
    "Who is the chairman of the board of Huali Group Co., Ltd.?",
    "嘉兴市政协主席高玲慧提出了什么建议?",
]
STREAM_STEPS = 24
STREAM_DELAY_S = 0.02  # between streamed steps: visible progress, about half a second in all

# Our own script, not document text: scrolls the opened document to its first quoted sentence.
SCROLL_TO_FIRST_MARK = """
watch('value', () => {
  const text = element.querySelector('.doc-text');
  const mark = text && text.querySelector('mark');
  if (text) text.scrollTop = mark ? Math.max(0, mark.offsetTop - 40) : 0;
});
"""
CSS = """
.cite { display: inline-block; padding: 0 .3em; border-radius: .35em; font-size: .8em; font-weight: 600;
        background: #ccfbf1; color: #115e59; font-variant-numeric: tabular-nums; }
sup.cite { cursor: help; }
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
.sources mark, .doc-view mark { background: #fde68a; padding: 0 .1em; border-radius: .2em; }
.page-image img { max-width: 100%; border: 1px solid #e2e8f0; margin-top: .4em; }
.index-info table { width: 100%; border-collapse: collapse; border: none; }
.index-info td, .index-info th { border: none; border-bottom: 1px solid #e2e8f0; padding: .3em .5em; text-align: left; }
.index-info td.num { text-align: right; }
"""

# No allowed_paths: the page serves no files of ours; documents reach it only as escaped text.
# Gradio accepts uploads on /gradio_api/upload even without an upload component: the chat takes
# no files, so any non-empty one is refused. The traffic summary (/monitoring/summary) is off.
SECURE_LAUNCH = {"max_file_size": 0, "enable_monitoring": False}


def build_app(assistant: Assistant) -> gr.Blocks:
    """The chat page for `assistant`; the caller sets the queue and launches it."""
    import gradio as gr

    def respond(message: str, chat: list[dict], asked: list[str]):
        """Stream the answer to `message` into the chat; fill the sources panel when done."""
        message = (message or "").strip()
        if not message:
            yield gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        chat = [*chat, {"role": "user", "content": escape_markdown(message)}, {"role": "assistant", "content": "…"}]
        yield "", chat, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        language = language_of(message)
        answer, draft = None, ""
        try:
            # With an LLM configured the reply streams as drafted, then is replaced by the verified
            # answer (or the extractive fallback); without one there is only the final Answer.
            for item in assistant.ask_stream(message, history=asked):
                if isinstance(item, str):
                    draft += item
                    chat[-1] = {"role": "assistant", "content": draft_message(draft, language)}
                    yield "", chat, gr.skip(), gr.skip(), gr.skip(), gr.skip()
                else:
                    answer = item
        except (QuestionError, IndexError_) as exc:
            chat[-1] = {"role": "assistant", "content": escape_markdown(str(exc))}
            yield "", chat, gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return
        for partial in [format_answer(answer)] if draft else stream_answer(answer, STREAM_STEPS):
            chat[-1] = {"role": "assistant", "content": partial}
            yield "", chat, gr.skip(), gr.skip(), gr.skip(), gr.skip()
            time.sleep(STREAM_DELAY_S)
        cited = [c.doc_id for c in answer.citations or answer.nearest]
        picker = gr.update(choices=document_choices(assistant.index), value=cited[0] if cited else None)
        yield "", chat, sources_html(answer, asked=message), picker, [*asked, message], quoted_spans(answer)

    def open_document(doc_id: str | None, spans: dict[str, list[tuple[int, int]]]) -> str:
        if not doc_id:
            return ""
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

    def show_index():
        index = assistant.index
        return index_html(index.manifest), gr.update(choices=document_choices(index))

    def refresh(progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (Gradio's injection idiom)
        progress(0, desc="Reading documents, embedding what changed…")
        try:
            report = assistant.refresh()
        except (OSError, ValueError, RuntimeError) as exc:
            return gr.skip(), gr.skip(), f"Refresh failed; still answering from the previous index.\n{exc}"
        summary = report.summary() if report.changed or report.skipped else "The index is up to date."
        return *show_index(), summary

    def clear():
        return [], [], sources_html(None), {}, ""

    # analytics_enabled=False: offline means no telemetry and no version check against PyPI.
    with gr.Blocks(title="Ask your documents · 问你的文档", analytics_enabled=False) as demo:
        asked = gr.State([])  # the user's questions as typed: what follow-ups are read against
        spans = gr.State({})  # doc_id -> quoted offsets of the latest answer, for the viewer
        gr.Markdown(
            "## Ask your documents · 问你的文档\n"
            "Answers quote your documents and cite them; nothing leaves this machine. "
            "Ask in English or Chinese, follow-ups included. · 用中文或英文提问，答案引用原文并标注出处。"
        )
        with gr.Tabs():
            with gr.Tab("Chat · 问答"):
                with gr.Row(equal_height=False):
                    with gr.Column(scale=5):
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
                            feedback_options=None,
                            buttons=["copy"],
                        )
                        with gr.Row():
                            question = gr.Textbox(
                                placeholder="Ask a question · 输入问题",
                                show_label=False,
                                scale=6,
                                elem_id="question",
                                max_lines=4,
                            )
                            send = gr.Button("Ask · 提问", variant="primary", scale=1, elem_id="ask")
                        new_chat = gr.Button("New conversation · 新对话", size="sm", variant="secondary")
                        examples = gr.Examples(EXAMPLES, inputs=question, label="Examples · 示例")
                    with gr.Column(scale=4):
                        sources = gr.HTML(sources_html(None), elem_id="sources", label="Sources")
                        gr.Markdown("**Full document · 全文**")
                        with gr.Row(equal_height=True):
                            picker = gr.Dropdown(
                                choices=[], show_label=False, container=False, scale=4, elem_id="doc-picker"
                            )
                            open_btn = gr.Button("Open · 打开", scale=1, min_width=100, elem_id="open-doc")
                        viewer = gr.HTML("", elem_id="document", js_on_load=SCROLL_TO_FIRST_MARK)
            with gr.Tab("Index · 索引"):
                index_panel = gr.HTML("", elem_id="index-panel")
                gr.Markdown(
                    "Refreshing re-reads the corpus folder and embeds only what changed. "
                    "The chat keeps answering from the current index until the new one is complete. · "
                    "刷新时只重新嵌入有变化的文档，完成前问答继续使用当前索引。"
                )
                refresh_btn = gr.Button("Refresh index · 刷新索引", variant="primary", elem_id="refresh")
                refresh_status = gr.Textbox(label="Last refresh", interactive=False, lines=3, elem_id="refresh-status")

        outputs = [question, chatbot, sources, picker, asked, spans]
        # The chat runs in the default concurrency group; the refresh gets its own single slot,
        # so a long re-embedding never takes the chat's slots and answers keep coming meanwhile.
        send.click(respond, [question, chatbot, asked], outputs)
        question.submit(respond, [question, chatbot, asked], outputs)
        examples.load_input_event.then(respond, [question, chatbot, asked], outputs)  # a click asks it
        open_btn.click(open_document, [picker, spans], viewer)
        new_chat.click(clear, None, [chatbot, asked, sources, spans, viewer])
        refresh_btn.click(
            refresh, None, [index_panel, picker, refresh_status], concurrency_limit=1, concurrency_id="refresh"
        )
        demo.load(show_index, None, [index_panel, picker])
    return demo


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
    args = parser.parse_args(argv)

    assistant = Assistant(settings or Settings.from_env())
    try:
        report = assistant.ensure_index()
    except FileNotFoundError as exc:  # the corpus folder is missing or empty (an unmounted drive?)
        if read_manifest(assistant.settings.index_dir) is None:
            print(f"{prog}: cannot build the index: {exc}", file=sys.stderr)
            return 1
        # As `rag ask` does: the index still answers, and is kept for when the folder is back.
        print(f"{prog}: warning: {str(exc).rstrip('.')}; answering from the existing index", file=sys.stderr)
        report = None
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"{prog}: cannot build the index: {exc}", file=sys.stderr)
        return 1
    if report is not None:
        print(f"index refreshed: {report.summary()}", file=sys.stderr)

    # No cyclic garbage collection while starting: its passes over the objects Gradio's import
    # creates took 0.55-0.7 s of a 2.1-3.0 s import; it is back on once the page is served.
    collecting = gc.isenabled()
    gc.disable()
    import gradio as gr

    demo = build_app(assistant)
    # Chosen from bench/load.py (20 simulated users, 2 cores; bench/RESULTS.md "Load"): with 2
    # answers at a time one core idled, since each answer holds its slot ~0.5 s while it streams;
    # 4 raised throughput from 3.1 to 5.4 answers/s. A queue of 16 refused a third of the requests
    # of 20 users (and the Refresh button, which shares it); 64 refused none and still bounds the
    # wait (~13 s when full) so overload gets a clear "queue is full" rather than a hung chat.
    demo.queue(default_concurrency_limit=4, max_size=64)
    theme = gr.themes.Soft(primary_hue="teal", neutral_hue="slate")
    demo.launch(
        server_name=args.host,
        server_port=args.port,
        theme=theme,
        css=CSS,
        footer_links=[],
        prevent_thread_lock=True,
        **SECURE_LAUNCH,
    )
    if collecting:
        gc.freeze()  # what starting created lives as long as the server: not scanned again
        gc.enable()
    # The page is up: load what the first question needs meanwhile, not before serving it.
    threading.Thread(target=assistant.warm_up, name="warm-up", daemon=True).start()
    demo.block_thread()
    return 0


if __name__ == "__main__":
    sys.exit(main(prog="python -m rag.web"))
