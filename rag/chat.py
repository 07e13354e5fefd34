"""The web chat's UI-independent half: answers and sources as safe HTML, and follow-up questions.

Document text and answer text are untrusted: every string that reaches the browser is escaped
here, and markup is only ever added around escaped text, never inside it. Follow-ups are turned
into standalone retrieval queries by prefixing the conversation's last standalone question.
Trade-off: a follow-up is recognised by surface cues (short, with a pronoun, "and ...", "那",
"呢"), not by a model, so an elliptical question without such a cue is taken as standalone,
and a short question that only happens to contain "it" is given context it did not need.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

from rag.answer import Answer, Citation, lead_prefix
from rag.documents import DocumentError, load_document
from rag.indexing import Index
from rag.preview import PagePreview

# --------------------------------------------------------------------------- escaping

# HTML's special characters, and the Markdown punctuation the chat's renderer would act on: as
# character references they render as themselves but are no longer syntax, so neither a tag
# nor `[x](javascript:...)` can come of them. One pass, so no reference is escaped twice.
_MARKDOWN_ESCAPES = {ord(ch): f"&#{ord(ch)};" for ch in "&<>\"'\\`*_{}[]()#+-!|~$=:"}


def escape_html(text: str) -> str:
    """Text made inert for an HTML context (element content or a quoted attribute)."""
    return html.escape(text, quote=True)


def escape_markdown(text: str) -> str:
    """Text made inert for the chat's Markdown-with-HTML renderer: no tags, no Markdown syntax."""
    return text.translate(_MARKDOWN_ESCAPES)


def short_title(title: str, limit: int = 60) -> str:
    """A title cut to `limit` characters at a word boundary where there is one."""
    title = " ".join(title.split())
    if len(title) <= limit:
        return title
    cut = title[: limit - 1]
    space = cut.rfind(" ")
    if not title[limit - 1].isspace() and space > limit // 2:  # do not end in the middle of a word
        cut = cut[:space]
    return cut.rstrip(" ,.;:") + "…"


# --------------------------------------------------------------------------- the chat message

LABELS = {
    "en": {
        "sources": "Sources",
        "no_answer_hint": "The nearest passages are listed under Sources, so you can judge for yourself.",
        "nearest": "No answer found. The nearest passages:",
        "cited": "Cited passages",
        "query": "Searched with the conversation's context:",
        "score": "score",
        "details": "details",
        "strong": "Quoted · strong evidence",
        "likely": "Quoted · likely answers the question",
        "weak": "Quoted · weak evidence: check it",
        "nearest_label": "Nearest passage · does not answer the question",
        "empty": "Ask a question: the passages its answer cites appear here, with the quoted sentences highlighted.",
        "drafting": "Writing… the citations are checked when the answer is complete.",
    },
    "zh": {
        "sources": "来源",
        "no_answer_hint": "最接近的段落列在“来源”中，供你自行判断。",
        "nearest": "没有找到答案。最接近的段落：",
        "cited": "引用的段落",
        "query": "结合对话上下文检索：",
        "score": "得分",
        "details": "详情",
        "strong": "已引用 · 证据充分",
        "likely": "已引用 · 很可能回答了问题",
        "weak": "已引用 · 证据较弱，请核对",
        "nearest_label": "最接近的段落 · 未回答问题",
        "empty": "提问后，答案引用的段落会显示在这里，引用的句子会高亮。",
        "drafting": "正在生成……回答完成后会核对引用。",
    },
}

_MARKER = re.compile(r"\[(\d+)\]")


def _marker_html(n: int, citation: Citation | None) -> str:
    if citation is None:  # a marker that resolves nowhere is shown as it is, not as a link
        return f"&#91;{n}&#93;"
    tip = escape_html(f"{short_title(citation.title, 80)} ({citation.doc_id})")
    return f'<sup class="cite" title="{tip}">&#91;{n}&#93;</sup>'


def format_answer(answer: Answer, text: str | None = None, final: bool = True) -> str:
    """The chat message for `answer`: escaped text, `[n]` as labels matching the sources panel.

    `text` (a prefix of the answer, while streaming) replaces `answer.answer`; `final` adds the
    footer that names each cited source, or, when the assistant abstained, says where to look.
    """
    labels = LABELS[answer.language]
    text = answer.answer if text is None else text
    by_number = {c.n: c for c in answer.citations}
    parts, last = [], 0
    if answer.lead and text.startswith(lead_prefix(answer.lead)):
        # The value asked for, in bold; the rest of the text stays inert.
        parts.append(f"<strong>{escape_html(answer.lead)}</strong> — ")
        last = len(lead_prefix(answer.lead))
    for m in _MARKER.finditer(text):
        parts.append(escape_markdown(text[last : m.start()]))
        parts.append(_marker_html(int(m.group(1)), by_number.get(int(m.group(1)))))
        last = m.end()
    parts.append(escape_markdown(text[last:]))
    message = "".join(parts)
    if not final:
        return message
    if answer.abstained:
        return f"{message}\n\n<em>{escape_html(labels['no_answer_hint'])}</em>"
    if answer.citations:
        sources = "<br>".join(
            f'<span class="cite">&#91;{c.n}&#93;</span> {escape_markdown(short_title(c.title))} '
            f'<code class="doc-id">{escape_markdown(c.doc_id)}</code>'
            for c in answer.citations
        )
        message += f'\n\n<span class="cite-list">{escape_html(labels["sources"])}:<br>{sources}</span>'
    return message


def draft_message(text: str, language: str) -> str:
    """An LLM's reply while it streams: escaped, and plainly not yet verified."""
    return f"{escape_markdown(text)}\n\n<em>{escape_html(LABELS[language]['drafting'])}</em>"


# --------------------------------------------------------------------------- sources panel


def highlight(text: str, offset: int, spans: Sequence[tuple[int, int]]) -> str:
    """`text` (which starts at document offset `offset`) escaped, with `spans` in <mark>."""
    merged: list[list[int]] = []
    for start, end in sorted((max(0, s - offset), min(len(text), e - offset)) for s, e in spans):
        if end <= start:
            continue  # outside this passage
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    out, last = [], 0
    for start, end in merged:
        out.append(escape_html(text[last:start]))
        out.append(f"<mark>{escape_html(text[start:end])}</mark>")
        last = end
    out.append(escape_html(text[last:]))
    return "".join(out)


# The answer judge's P(the passages answer the question) (Answer.evidence, rag.judge), put into
# words for a reader; no new scoring. Round bars above the calibrated abstention threshold
# (0.36 in rag/judge.json): not fitted, only a reading of a probability as "strong" or "likely".
EVIDENCE_WORDS = ((0.8, "strong"), (0.5, "likely"), (0.0, "weak"))


def relevance_label(answer: Answer) -> str:
    """A source card's relevance in words: how sure the judge is that the quotes answer, or that it found none."""
    labels = LABELS[answer.language]
    if answer.abstained:
        return labels["nearest_label"]
    return labels[next(word for bar, word in EVIDENCE_WORDS if answer.evidence >= bar)]


def _source_card(c: Citation, relevance: str, labels: dict) -> str:
    # Fusion scores and offsets mean nothing to a reader; they stay behind the details toggle.
    return (
        f'<div class="src-card" id="src-{c.n}">'
        f'<div class="src-head"><span class="cite">&#91;{c.n}&#93;</span> '
        f'<span class="src-title">{escape_html(short_title(c.title, 120))}</span></div>'
        f'<div class="src-meta"><code class="doc-id">{escape_html(c.doc_id)}</code>{_where(c)}</div>'
        f'<div class="src-relevance">{escape_html(relevance)}</div>'
        f'<div class="src-text">{highlight(c.text, c.start, c.quoted)}</div>'
        f'<details class="src-details"><summary>{escape_html(labels["details"])}</summary>'
        f"characters {c.start}–{c.end} · {escape_html(labels['score'])} {c.score:.3f} (retrieval rank fusion)</details>"
        "</div>"
    )


def _where(c: Citation) -> str:
    """· p. 12 · Results: the page and section of a quote, when the document has them."""
    place = c.place.removeprefix(c.doc_id)
    return f'<span class="src-place">{escape_html(place)}</span>' if place else ""


def sources_html(answer: Answer | None, asked: str | None = None) -> str:
    """The sources panel: each cited passage (or, on abstention, each nearest one) with its
    title, document id, score and the quoted sentences highlighted. When the query searched
    (`answer.query`, or else `answer.question`) differs from what the user `asked`, the panel
    says what was searched."""
    if answer is None:
        empty = "<br>".join(escape_html(LABELS[lang]["empty"]) for lang in ("en", "zh"))
        return f'<div class="sources"><p class="src-empty">{empty}</p></div>'
    labels = LABELS[answer.language]
    relevance = relevance_label(answer)
    parts = ['<div class="sources">']
    searched = answer.query or answer.question
    if asked is not None and asked.strip() != searched.strip():
        parts.append(f'<p class="src-query">{escape_html(labels["query"])} <q>{escape_html(searched)}</q></p>')
    if answer.abstained:
        parts.append(f'<p class="src-abstain">{escape_html(labels["nearest"])}</p>')
        parts.extend(_source_card(c, relevance, labels) for c in answer.nearest)
    else:
        parts.append(f'<p class="src-heading">{escape_html(labels["cited"])}</p>')
        parts.extend(_source_card(c, relevance, labels) for c in answer.citations)
    parts.append("</div>")
    return "".join(parts)


def quoted_spans(answer: Answer | None) -> dict[str, list[tuple[int, int]]]:
    """Document id -> offsets of the sentences the answer quoted (for the document viewer)."""
    spans: dict[str, list[tuple[int, int]]] = {}
    for c in answer.citations if answer else []:
        spans.setdefault(c.doc_id, []).extend(c.quoted)
    return spans


# --------------------------------------------------------------------------- documents and index


def document_choices(index: Index) -> list[tuple[str, str]]:
    """(label, doc_id) for every indexed document, for a picker."""
    choices = []
    for doc_id, meta in index.documents.items():
        title = meta.get("title") or doc_id
        choices.append((f"{doc_id} · {short_title(title, 50)}", doc_id))
    return choices


def document_text(
    index: Index, corpus_dir: Path, doc_id: str, ocr_languages: str = "", ocr_cache_dir: Path | None = None
) -> str | None:
    """The full text of an indexed document, as indexed; None when `doc_id` is not indexed.

    Only ids in the index's manifest are opened, so a crafted id cannot reach other files.
    When the file changed since indexing, the text is rebuilt from the indexed chunks, so the
    offsets of the quoted sentences still point at the right characters.
    """
    meta = index.documents.get(doc_id)
    if meta is None:
        return None
    try:
        # The OCR settings it was indexed with: its scanned pages are then read from the cache.
        document = load_document(corpus_dir / doc_id, doc_id, ocr_languages=ocr_languages, cache_dir=ocr_cache_dir)
        if document.content_hash == meta.get("sha256"):
            return document.text
    except (OSError, DocumentError, UnicodeError):
        pass
    chars = [" "] * int(meta.get("chars", 0))
    for chunk in index.chunks:
        if chunk.doc_id == doc_id:
            chars[chunk.start : chunk.end] = chunk.text
    return "".join(chars)


def document_html(doc_id: str, title: str, text: str | None, spans: Sequence[tuple[int, int]] = ()) -> str:
    """The document viewer: the escaped full text with the answer's quoted sentences marked."""
    if text is None:
        return f'<div class="doc-view"><p>Not in the index: <code>{escape_html(doc_id)}</code></p></div>'
    heading = escape_html(short_title(title, 120))
    return (
        f'<div class="doc-view"><div class="src-head"><span class="src-title">{heading}</span></div>'
        f'<div class="src-meta"><code class="doc-id">{escape_html(doc_id)}</code> · {len(text)} chars</div>'
        f'<div class="doc-text">{highlight(text, 0, spans)}</div></div>'
    )


def page_image_html(preview: PagePreview) -> str:
    """A PDF page as an image under the document viewer, its quoted sentences highlighted (rag.preview)."""
    data = base64.b64encode(preview.png).decode("ascii")  # our own PNG: base64 is inert in an attribute
    label = f"Page {preview.page} · 第{preview.page}页"
    return (
        f'<details class="page-image" open><summary>{escape_html(label)}</summary>'
        f'<img src="data:image/png;base64,{data}" alt="{escape_html(label)}"></details>'
    )


def index_html(manifest: dict) -> str:
    """The index panel: when it was built, with which model, and which documents it holds."""
    model = manifest.get("model", {})
    counts = manifest.get("counts", {})
    rows = "".join(
        f"<tr><td><code>{escape_html(doc_id)}</code></td><td>{escape_html(short_title(meta.get('title', ''), 90))}</td>"
        f"<td class='num'>{int(meta.get('chars', 0)):,}</td></tr>"
        for doc_id, meta in manifest.get("documents", {}).items()
    )
    return (
        '<div class="index-info">'
        f"<p><b>Model</b> {escape_html(str(model.get('name', '?')))} "
        f"({escape_html(str(model.get('dimension', '?')))} dimensions) · "
        f"<b>updated</b> {escape_html(str(manifest.get('updated', '?')))} · "
        f"<b>created</b> {escape_html(str(manifest.get('created', '?')))}</p>"
        f"<p>{int(counts.get('documents', 0))} documents, {int(counts.get('chunks', 0))} passages, "
        f"{int(counts.get('sentences', 0))} sentences</p>"
        "<table><thead><tr><th>Document id</th><th>Title</th><th>Characters</th></tr></thead>"
        f"<tbody>{rows}</tbody></table>{_skipped_html(manifest.get('skipped') or {})}</div>"
    )


def _skipped_html(skipped: dict) -> str:
    """Files in the corpus folder that were not indexed, each with why: none is dropped silently."""
    if not skipped:
        return ""
    rows = "".join(
        f"<tr><td><code>{escape_html(doc_id)}</code></td><td>{escape_html(str(meta.get('reason', '')))}</td></tr>"
        for doc_id, meta in sorted(skipped.items())
    )
    return (
        f'<p class="skipped-head"><b>Not indexed</b> ({len(skipped)})</p>'
        f'<table class="skipped"><thead><tr><th>File</th><th>Why</th></tr></thead><tbody>{rows}</tbody></table>'
    )


# --------------------------------------------------------------------------- follow-up questions

FOLLOW_UP_MAX_WORDS = 12  # English: longer questions are taken to carry their own context
FOLLOW_UP_MAX_CJK = 25  # Chinese characters, about as much content as 12 English words

_EN_OPENER = re.compile(r"^\s*(and|also|what about|how about|then|so|but)\b", re.I)
_EN_ANAPHORA = re.compile(
    r"\b(it|its|they|them|their|he|him|his|she|her|these|those|the same"
    r"|(the|this|that|next|last|other|previous) (one|ones))\b",
    re.I,
)
# "how many came ...", "how much?": a count whose noun was left in the previous question.
_EN_ELLIPSIS = re.compile(
    r"\bhow (many|much)\s*(\?|$|(are|were|is|was|did|do|does|have|has|had|came|come|of|in|from|will)\b)", re.I
)
_ZH_OPENER = re.compile(r"^\s*(那|那么|还有|另外|而|其中)")
# Not the 他 of 其他 ("other") nor the 该 of 应该 ("should").
_ZH_ANAPHORA = re.compile(r"(它|(?<!其)他|她|其中|这些|那些|(?<!应)该|此|呢\s*[?？]?\s*$)")
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]")


def is_follow_up(question: str) -> bool:
    """True for a short question that leans on the previous one ("And how many ...?", "那安徽呢？")."""
    cjk = len(_CJK.findall(question))
    if cjk:
        if cjk > FOLLOW_UP_MAX_CJK:
            return False
        if _ZH_OPENER.search(question) or _ZH_ANAPHORA.search(question):
            return True
    if len(re.findall(r"[A-Za-z0-9]+", question)) > FOLLOW_UP_MAX_WORDS:
        return False
    return bool(_EN_OPENER.search(question) or _EN_ANAPHORA.search(question) or _EN_ELLIPSIS.search(question))


def contextualize(question: str, history: Sequence[str]) -> str:
    """The retrieval query for `question` given the previous user questions (oldest first).

    A follow-up is prefixed with the most recent standalone question, so "And how many came
    from Zhejiang?" is searched together with the question it follows; a chain of follow-ups
    ("那安徽呢？" after "其中浙江有多少项？") keeps the question the chain started from.
    Anything else is returned unchanged. The assistant retrieves with this query but picks the
    sentences to quote by the follow-up itself (see Assistant._answer), or it would quote the
    previous answer again.
    """
    previous = [q.strip() for q in history if q and q.strip()]
    if not previous or not is_follow_up(question):
        return question
    anchor = next((q for q in reversed(previous) if not is_follow_up(q)), previous[0])
    return f"{anchor} {question.strip()}"
