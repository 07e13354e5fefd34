"""The on-disk index: chunk and sentence vectors, chunk metadata and terms, and a manifest.

Layout: `index_dir/CURRENT` names the live generation, `index_dir/gen-NNNNNN/` holds its files
(`manifest.json`, `chunks.jsonl`, `chunks.faiss`, `sentences.faiss`, and the BM25 matrix in
`bm25.json` + `bm25.bin`, memory-mapped on load rather than rebuilt from the terms). A refresh writes a new
generation beside the old one, fsyncs it, then atomically replaces CURRENT, so a crash leaves
either the old or the new index, never a mix. CURRENT also holds the sha256 of the generation's
manifest, and the manifest that of every other file, all verified on load; loading reads JSON,
FAISS files and raw arrays only, never pickle. Refresh is incremental by content hash: a document whose bytes
are unchanged is not re-chunked, and a chunk or sentence whose text is unchanged keeps its vector.
With `vector_backend` milvus, `chunks.milvus.json` and `sentences.milvus.json` stand in for the
`.faiss` files: each names a Milvus collection made for that generation (rag.milvus).
The replaced generation is deleted once `generation_grace_s` has passed, for replicas still
loading or serving it (_remove_stale).
Trade-off: each refresh rewrites the (small) metadata files whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import time
from array import array
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from rag import __version__
from rag.chunking import Chunk, Sentence, chunk_document, int_id
from rag.config import GENERATION_GRACE_S, Settings
from rag.crosslingual import document_terms
from rag.documents import CorpusEmptyError, Document, LoadError, is_chinese, load_corpus, normalize
from rag.embeddings import Embedder
from rag.lexical import BM25
from rag.store import BACKENDS, VectorStore, choose_index_type, load_store, store_file

# 2: chunk terms include pinyin and joined names (rag.crosslingual); 3: the BM25 matrix is saved
FORMAT_VERSION = 3
# How text becomes chunks and search terms; an index made another way is rebuilt on refresh, since
# its stored chunks and vectors would not match a question's. 1: Traditional Chinese searched as
# Simplified (rag.documents.normalize); 2: sentences by Blingfire, hard-wrapped lines joined.
TEXT_VERSION = 2


def _files(backend: str = "faiss") -> tuple[str, ...]:
    """A generation's files: with Milvus, descriptors of its collections stand in for the .faiss files."""
    return (
        "manifest.json",
        "chunks.jsonl",
        store_file("chunks", backend),
        store_file("sentences", backend),
        *BM25.FILES,
    )


_FILES = _files("faiss")  # the default backend's


class IndexError_(RuntimeError):
    """The index on disk is missing, unreadable or was built with other settings."""


class IndexMissingError(IndexError_):
    pass


class IndexMismatchError(IndexError_):
    pass


def sentence_key(doc_id: str, text: str) -> int:
    """Sentence vectors are shared by the overlapping chunks that contain the sentence."""
    return int_id(f"{doc_id}\x00{normalize(text)}")


@dataclass
class Index:
    """A loaded index generation: what retrieval and answering read."""

    manifest: dict
    chunks: list[Chunk]
    terms: list[list[str]]
    chunk_vectors: VectorStore
    sentence_vectors: VectorStore
    bm25: BM25  # over `terms`, saved with them (see _write_generation)
    path: Path
    row_of_id: dict[int, int] = field(init=False)
    chunk_rows_of_sentence: dict[int, list[int]] = field(init=False)
    chinese_rows: np.ndarray = field(init=False)  # True where a chunk is Chinese text

    def __post_init__(self) -> None:
        self.row_of_id = {int_id(c.chunk_id): row for row, c in enumerate(self.chunks)}
        self.chunk_rows_of_sentence = {}
        for row, chunk in enumerate(self.chunks):
            for key in self.sentence_keys(chunk):
                self.chunk_rows_of_sentence.setdefault(key, []).append(row)
        self.chinese_rows = np.array([is_chinese(c.text) for c in self.chunks], dtype=bool)

    @staticmethod
    def sentence_keys(chunk: Chunk) -> list[int]:
        base = chunk.start
        return [sentence_key(chunk.doc_id, chunk.text[s.start - base : s.end - base]) for s in chunk.sentences]

    @property
    def documents(self) -> dict[str, dict]:
        return self.manifest["documents"]


@dataclass
class RefreshReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[LoadError] = field(default_factory=list)
    rebuilt_because: str | None = None
    embedded_chunks: int = 0
    embedded_sentences: int = 0
    seconds: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed or self.rebuilt_because)

    def to_json(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "removed": self.removed,
            "unchanged": len(self.unchanged),
            "skipped": [{"doc_id": e.doc_id, "reason": e.reason} for e in self.skipped],
            "rebuilt_because": self.rebuilt_because,
            "embedded_chunks": self.embedded_chunks,
            "embedded_sentences": self.embedded_sentences,
            "seconds": round(self.seconds, 2),
        }

    def summary(self) -> str:
        lines = []
        if self.rebuilt_because:
            lines.append(f"full rebuild: {self.rebuilt_because}")
        lines.append(
            f"added {len(self.added)}, updated {len(self.updated)}, removed {len(self.removed)}, "
            f"unchanged {len(self.unchanged)}, skipped {len(self.skipped)} "
            f"(embedded {self.embedded_chunks} chunks, {self.embedded_sentences} sentences "
            f"in {self.seconds:.1f} s)"
        )
        for name, ids in (("added", self.added), ("updated", self.updated), ("removed", self.removed)):
            lines.extend(f"  {name}: {doc_id}" for doc_id in ids)
        lines.extend(f"  skipped: {e.doc_id}: {e.reason}" for e in self.skipped)
        return "\n".join(lines)


@dataclass
class PreparedCorpus:
    """A corpus read, chunked and embedded elsewhere (rag.ray_build), for `refresh_index` to write.

    `chunked` holds the chunks and search terms made from the very text in `documents`, by doc_id;
    `embedder` answers with the vectors made there. The refresh still decides what is new, carries
    old vectors and writes the generation as a local build does: a document missing from `chunked`
    is chunked here, and a text without a vector is embedded here, so a stale guess of what changed
    costs time, never correctness.
    """

    documents: list[Document]
    skipped: list[LoadError]
    chunked: dict[str, tuple[list[Chunk], list[list[str]]]]
    embedder: Embedder


# --------------------------------------------------------------------------- reading


def _read_pointer(index_dir: Path) -> tuple[Path, str | None] | None:
    """(live generation, sha256 of its manifest) from CURRENT; None when there is no index."""
    try:
        fields = (index_dir / "CURRENT").read_text(encoding="utf-8").split()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError):
        fields = []
    well_formed = (
        len(fields) in (1, 2)
        and re.fullmatch(r"gen-\d{6}", fields[0])
        and (len(fields) == 1 or re.fullmatch(r"[0-9a-f]{64}", fields[1]))
    )
    if not well_formed:
        return index_dir / "CURRENT", "unreadable"  # reported by load_index as a damaged CURRENT
    return index_dir / fields[0], fields[1] if len(fields) == 2 else None


def current_generation(index_dir: Path) -> Path | None:
    pointer = _read_pointer(index_dir)
    return pointer[0] if pointer else None


def read_manifest(index_dir: Path) -> dict | None:
    gen = current_generation(index_dir)
    if gen is None:
        return None
    try:
        return json.loads((gen / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _checksum(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_compatible(manifest: dict, model_name: str, dim: int) -> None:
    built_with = manifest.get("model", {})
    if built_with.get("name") != model_name or built_with.get("dimension") != dim:
        raise IndexMismatchError(
            f"the index was built with model {built_with.get('name')!r} "
            f"(dimension {built_with.get('dimension')}), but the configured model is "
            f"{model_name!r} (dimension {dim}). Run `rag index --rebuild` to rebuild it, "
            "or set RAG_EMBED_MODEL back to the model it was built with."
        )


def load_index(index_dir: Path, embedder: Embedder | None = None) -> Index:
    """Load the live generation, verifying file checksums and (given an embedder) the model.

    Only JSON and FAISS's own format are read: nothing in the index directory is unpickled or run.
    """
    for _attempt in range(3):
        pointer = _read_pointer(index_dir)
        try:
            return _load_generation(index_dir, pointer, embedder)
        except IndexMismatchError:
            raise
        except IndexError_:
            # A concurrent `rag index` may have made a new generation current and deleted this
            # one while it was being read: then read the new one; otherwise the damage is real.
            if _read_pointer(index_dir) == pointer:
                raise
    return _load_generation(index_dir, _read_pointer(index_dir), embedder)


def _load_generation(index_dir: Path, pointer: tuple[Path, str | None] | None, embedder: Embedder | None) -> Index:
    fix = "Run `rag index --rebuild` to rebuild it."
    current = index_dir / "CURRENT"
    if pointer is None:
        orphans = sorted(p.name for p in index_dir.glob("gen-*"))
        if orphans:  # a first build that stopped before it was complete, or a deleted CURRENT
            raise IndexMissingError(f"index file {current} is missing (found {', '.join(orphans)}). {fix}")
        raise IndexMissingError(f"no index in {index_dir}: run `rag index` to build one")
    gen, manifest_sha = pointer
    if manifest_sha == "unreadable":
        raise IndexError_(f"index file {current} is damaged (it should name a generation and its checksum). {fix}")
    if not gen.is_dir():
        raise IndexError_(f"index generation {gen} named in {current} is missing. {fix}")
    manifest_path = gen / "manifest.json"
    try:
        raw_manifest = manifest_path.read_bytes()
    except FileNotFoundError as exc:
        raise IndexError_(f"index file {manifest_path} is missing. {fix}") from exc
    except OSError as exc:
        raise IndexError_(f"cannot read {manifest_path}: {exc}. {fix}") from exc
    if manifest_sha is not None and hashlib.sha256(raw_manifest).hexdigest() != manifest_sha:
        raise IndexError_(
            f"index file {manifest_path} does not match the checksum in {current}: one of them is damaged. {fix}"
        )
    try:
        manifest = json.loads(raw_manifest.decode("utf-8"))
    except ValueError as exc:
        raise IndexError_(f"index file {manifest_path} is damaged ({exc}). {fix}") from exc
    version = manifest.get("format") if isinstance(manifest, dict) else None
    if version != FORMAT_VERSION:
        raise IndexMismatchError(f"index format {version} is not {FORMAT_VERSION}. {fix}")
    backend = manifest.get("vector_backend", "faiss")  # absent in indexes built before Milvus
    if backend not in BACKENDS:
        raise IndexError_(f"index file {manifest_path} is damaged (unknown vector backend {backend!r}). {fix}")
    files = _files(backend)
    checksums = manifest.get("checksums") or {}
    for name in files[1:]:  # every data file must have a checksum, not only the ones listed
        path = gen / name
        if name not in checksums:
            raise IndexError_(f"index file {manifest_path} is damaged (no checksum for {name}). {fix}")
        try:
            actual = _checksum(path)
        except FileNotFoundError:
            raise IndexError_(f"index file {path} is missing. {fix}") from None
        except OSError as exc:
            raise IndexError_(f"cannot read {path}: {exc}. {fix}") from exc
        if actual != checksums[name]:
            raise IndexError_(f"index file {path} is damaged (checksum mismatch). {fix}")
    if embedder is not None:
        check_compatible(manifest, embedder.name, embedder.dim)
    try:
        chunks, terms = _read_chunks(gen / "chunks.jsonl")
        chunk_vectors = load_store(gen / files[2])
        sentence_vectors = load_store(gen / files[3])
        bm25 = BM25.load(*(gen / name for name in BM25.FILES))
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        # Verified a moment ago: deleted by a concurrent writer since (load_index retries), or a disk fault.
        raise IndexError_(f"cannot read index generation {gen}: {exc}. {fix}") from exc
    return Index(
        manifest=manifest,
        chunks=chunks,
        terms=terms,
        chunk_vectors=chunk_vectors,
        sentence_vectors=sentence_vectors,
        bm25=bm25,
        path=gen,
    )


def _interned(terms: list[str]) -> list[str]:
    """One string object per distinct term: a large corpus repeats its vocabulary millions of times."""
    return [sys.intern(t) for t in terms]


def _read_chunks(path: Path) -> tuple[list[Chunk], list[list[str]]]:
    chunks, terms = [], []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            chunks.append(
                Chunk(
                    chunk_id=row["chunk_id"],
                    doc_id=row["doc_id"],
                    start=row["start"],
                    end=row["end"],
                    text=row["text"],
                    sentences=tuple(Sentence(s, e) for s, e in row["sentences"]),
                )
            )
            terms.append(_interned(row["terms"]))
    return chunks, terms


# --------------------------------------------------------------------------- writing


@contextlib.contextmanager
def index_lock(index_dir: Path, wait: bool = True) -> Iterator[None]:
    """One writer at a time; a second `rag index` waits (or, with wait=False, stops)."""
    # filelock, not fcntl: the same OS-level lock (flock on POSIX, LockFileEx on Windows) on every
    # platform, released by the OS if the process dies, so a killed `rag index` never blocks the next.
    from filelock import FileLock, Timeout

    index_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(index_dir / ".lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise IndexError_(f"another `rag index` is updating {index_dir}; try again later") from None
        print(f"waiting for another `rag index` to finish with {index_dir} ...", file=sys.stderr)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def _fsync_dir(path: Path) -> None:
    if os.name == "nt":  # Windows cannot open a directory; NTFS journals the rename itself
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _next_generation(index_dir: Path) -> str:
    # Past every generation on disk, not only the current one: a crash after the rename in
    # _write_generation but before CURRENT moved leaves a newer, never-current generation that
    # must not be reused. (A number can be reused after a crash before that rename: only its
    # staging folder and Milvus collections existed, and they are replaced.)
    numbers = [int(p.name[4:]) for p in index_dir.glob("gen-*") if p.name[4:].isdigit()]
    return f"gen-{max(numbers, default=0) + 1:06d}"


def _write_generation(
    index_dir: Path,
    manifest: dict,
    chunks: list[Chunk],
    terms: list[list[str]],
    chunk_store: VectorStore,
    sentence_store: VectorStore,
    name: str | None = None,
) -> Path:
    name = name or _next_generation(index_dir)
    files = _files(manifest.get("vector_backend", "faiss"))
    staging = index_dir / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with (staging / "chunks.jsonl").open("w", encoding="utf-8") as fh:
        for chunk, chunk_terms in zip(chunks, terms):
            row = {
                "chunk_id": chunk.chunk_id,
                "doc_id": chunk.doc_id,
                "start": chunk.start,
                "end": chunk.end,
                "text": chunk.text,
                "sentences": [[s.start, s.end] for s in chunk.sentences],
                "terms": chunk_terms,
            }
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    chunk_store.save(staging / files[2])
    sentence_store.save(staging / files[3])
    # Rebuilt whole: idf depends on every document. Cheap next to embedding, and it spares every
    # reader the rebuild (25-42 s at 1M chunks, bench/RESULTS.md).
    BM25(terms).save(*(staging / name for name in BM25.FILES))
    manifest["checksums"] = {n: _checksum(staging / n) for n in files if n != "manifest.json"}
    manifest_bytes = json.dumps(manifest, indent=1, ensure_ascii=False).encode("utf-8")
    (staging / "manifest.json").write_bytes(manifest_bytes)
    for n in files:
        with (staging / n).open("rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(staging)
    final = index_dir / name
    os.rename(staging, final)
    pointer = index_dir / ".CURRENT.tmp"
    with pointer.open("w", encoding="utf-8") as fh:
        fh.write(f"{name} {hashlib.sha256(manifest_bytes).hexdigest()}\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(pointer, index_dir / "CURRENT")
    _fsync_dir(index_dir)
    return final  # the caller sweeps the replaced generation when its grace is over (_remove_stale)


RETIRED = "RETIRED"  # in a replaced generation's folder: when a sweep first found it replaced


def _remove_stale(index_dir: Path, grace_s: float = GENERATION_GRACE_S) -> None:
    """Delete generations CURRENT has not named for `grace_s` seconds, and staging folders a killed run left.

    Called with the lock held. A replaced generation is kept for `grace_s` seconds, timed from the
    first sweep that finds it replaced (right after CURRENT moves; recorded in its RETIRED file),
    for replicas still loading or serving it: a loaded index holds its data in memory except
    bm25.bin, which it memory-maps, and a deleted file's pages stay readable while mapped on a
    local disk (POSIX) but not on NFS; a Milvus generation's collections go with its folder. It is
    deleted by the first sweep after that (every refresh sweeps). A reader still verifying a
    generation that is deleted sees CURRENT moved and re-reads (see load_index).
    """
    live = current_generation(index_dir)
    kept = [live] if live is not None else []
    for old in index_dir.glob("gen-*"):
        if live is None or old == live or not old.is_dir():
            continue
        if grace_s > 0 and _seconds_retired(old) < grace_s:
            kept.append(old)
            continue
        _drop_collections(old)
        shutil.rmtree(old, ignore_errors=True)
    for stale in index_dir.glob(".gen-*.tmp"):
        _drop_collections(stale)
        shutil.rmtree(stale, ignore_errors=True)
    if live is not None and any(live.glob("*.milvus.json")):
        _drop_orphan_collections(index_dir, kept)


def _seconds_retired(gen: Path) -> float:
    """How long ago a sweep first found `gen` replaced: 0 the first time, when it records the time."""
    marker = gen / RETIRED
    try:
        return time.time() - float(marker.read_text(encoding="ascii"))
    except FileNotFoundError:
        with contextlib.suppress(OSError):
            marker.write_text(f"{time.time():.3f}\n", encoding="ascii")
        return 0.0
    except (OSError, ValueError):  # unreadable: its own modification time says when it was written
        with contextlib.suppress(OSError):
            return time.time() - marker.stat().st_mtime
        return 0.0


def _drop_collections(gen_dir: Path) -> None:
    """A Milvus generation's collections go with its folder (pymilvus is imported only if it has some)."""
    if any(gen_dir.glob("*.milvus.json")):
        from rag.milvus import drop_described

        drop_described(gen_dir)


def _drop_orphan_collections(index_dir: Path, kept: list[Path]) -> None:
    """Collections of this index that no kept generation names: a refresh killed before its folder existed."""
    from rag.milvus import MilvusUnavailableError, drop_orphans

    try:
        descriptors = [json.loads(p.read_text(encoding="utf-8")) for gen in kept for p in gen.glob("*.milvus.json")]
        uri = os.environ.get("RAG_MILVUS_URI") or descriptors[0]["uri"]
        drop_orphans(uri, index_dir, {d["collection"] for d in descriptors})
    except (OSError, ValueError, KeyError, MilvusUnavailableError):
        pass  # a later refresh sweeps again; serving does not depend on it


def _versions() -> dict[str, str]:
    from importlib import metadata

    # Read from package metadata: importing sentence-transformers would pull in torch.
    versions = {"rag": __version__}
    for package in ("faiss-cpu", "numpy", "sentence-transformers", "torch", "jieba"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return versions


def _file_stamp(corpus_dir: Path, doc: Document) -> list[int]:
    if doc.stamp is not None:
        return list(doc.stamp)
    return _path_stamp(corpus_dir / doc.doc_id)


def _path_stamp(path: Path) -> list[int]:
    try:
        st = path.stat()
    except OSError:  # gone (or a dangling link): a stamp no file has, so the next check refreshes
        return [-1, -1]
    return [st.st_size, st.st_mtime_ns]


def _progress(total: int, label: str, unit: str, at_least: int):
    """A progress bar on stderr, shown only for work large enough to need one."""
    from tqdm import tqdm

    return tqdm(
        total=total, desc=label, unit=unit, unit_scale=True, file=sys.stderr, disable=total < at_least, leave=False
    )


def _embed_in_batches(
    embed: Callable[[list[str]], np.ndarray],
    rows: np.ndarray,
    text_of: Callable[[int], str],
    label: str,
    batch: int = 64,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(rows, vectors) a batch at a time: texts are made per batch, never all held at once."""
    from tqdm import tqdm

    with tqdm(
        total=len(rows),
        desc=f"embedding {label}",
        unit=label,
        file=sys.stderr,
        disable=len(rows) < 2 * batch,
        leave=False,
    ) as bar:
        for i in range(0, len(rows), batch):
            part = rows[i : i + batch]
            yield part, embed([text_of(int(r)) for r in part])
            bar.update(len(part))


def _rebuild_reason(old: dict | None, settings: Settings, embedder: Embedder) -> str | None:
    if old is None:
        return None
    try:
        check_compatible(old, embedder.name, embedder.dim)
    except IndexMismatchError:
        return f"embedding model changed from {old.get('model', {}).get('name')!r} to {embedder.name!r}"
    chunking = _chunking(settings)
    if old.get("chunking") != chunking:
        return f"chunking settings changed from {old.get('chunking')} to {chunking}"
    return None


def _chunking(settings: Settings) -> dict:
    chunking = {"max_tokens": settings.chunk_tokens, "overlap": settings.chunk_overlap, "text": TEXT_VERSION}
    if settings.chunk_vectors != "embedded":  # absent in indexes made before the choice existed
        chunking["chunk_vectors"] = settings.chunk_vectors
    return chunking


def refresh_index(
    settings: Settings,
    embedder: Embedder,
    rebuild: bool = False,
    allow_empty: bool = False,
    prepared: PreparedCorpus | None = None,
) -> RefreshReport:
    """Bring the index in `settings.index_dir` up to date with `settings.corpus_dir`.

    A corpus with no readable document never empties an index that holds some (it is more often
    an unmounted or mistyped folder than a deliberate deletion) unless `allow_empty` says so.
    With `prepared`, the corpus was read, chunked and embedded elsewhere (rag.ray_build).
    """
    if settings.vector_backend == "milvus" and not settings.milvus_uri:
        raise ValueError(
            "--vector-backend milvus needs --milvus-uri (RAG_MILVUS_URI): a Milvus Lite folder such as "
            "./milvus.db, or a server such as http://127.0.0.1:19530"
        )
    started = time.perf_counter()
    report = RefreshReport()
    if prepared is None:
        documents, report.skipped = load_corpus(
            settings.corpus_dir, int(settings.max_document_mb * 2**20), settings.ocr_languages, settings.cache_dir
        )
    else:
        documents, report.skipped, embedder = prepared.documents, prepared.skipped, prepared.embedder
    with index_lock(settings.index_dir):
        old_manifest = read_manifest(settings.index_dir)
        indexed = len((old_manifest or {}).get("documents") or {})
        if not documents and indexed and not allow_empty:
            raise CorpusEmptyError(
                f"the corpus folder {settings.corpus_dir} has no readable documents, but the index holds "
                f"{indexed}: is the folder unmounted or mistyped? The index was left as it was; to empty "
                "it on purpose, run `rag index --allow-empty`."
            )
        old: Index | None = None
        report.rebuilt_because = "--rebuild requested" if rebuild and old_manifest else None
        report.rebuilt_because = report.rebuilt_because or _rebuild_reason(old_manifest, settings, embedder)
        if old_manifest is not None and report.rebuilt_because is None:
            try:
                old = load_index(settings.index_dir, embedder)
            except IndexError_ as exc:
                report.rebuilt_because = f"the previous index could not be read ({exc})"
        _plan_and_write(settings, embedder, documents, old, report, prepared.chunked if prepared else {})
        _remove_stale(settings.index_dir, settings.generation_grace_s)
    report.seconds = time.perf_counter() - started
    return report


def _plan_and_write(
    settings: Settings,
    embedder: Embedder,
    documents: list[Document],
    old: Index | None,
    report: RefreshReport,
    chunked: dict[str, tuple[list[Chunk], list[list[str]]]] | None = None,
) -> None:
    old_docs = old.documents if old else {}
    chunked = chunked or {}
    old_chunks_by_doc: dict[str, list[int]] = {}
    if old:
        for row, chunk in enumerate(old.chunks):
            old_chunks_by_doc.setdefault(chunk.doc_id, []).append(row)

    present = {d.doc_id for d in documents}
    # A document that was indexed before but cannot be read now keeps its previous version:
    # a transient read error must not silently drop it from answers.
    unreadable_but_indexed = {e.doc_id for e in report.skipped if e.doc_id in old_docs}

    chunks: list[Chunk] = []
    terms: list[list[str]] = []
    doc_entries: dict[str, dict] = {}
    todo = sum(len(d.text) for d in documents if old_docs.get(d.doc_id, {}).get("sha256") != d.content_hash)
    progress = _progress(todo, "chunking", "char", 2_000_000)  # a large file takes a minute before embedding
    for doc in documents:
        previous = old_docs.get(doc.doc_id)
        if previous and previous["sha256"] == doc.content_hash and old is not None:
            rows = old_chunks_by_doc.get(doc.doc_id, [])
            chunks.extend(old.chunks[r] for r in rows)
            terms.extend(old.terms[r] for r in rows)
            report.unchanged.append(doc.doc_id)
        elif doc.doc_id in chunked:  # chunked elsewhere (rag.ray_build), from this very text
            made_chunks, made_terms = chunked[doc.doc_id]
            chunks.extend(made_chunks)
            terms.extend(_interned(t) for t in made_terms)
            progress.update(len(doc.text))
            (report.updated if previous else report.added).append(doc.doc_id)
        else:
            new_chunks = chunk_document(doc, embedder.count_tokens, settings.chunk_tokens, settings.chunk_overlap)
            chunks.extend(new_chunks)
            done = 0
            for chunk in new_chunks:
                terms.append(_interned(document_terms(chunk.search_text)))
                progress.update(max(0, chunk.end - done))
                done = max(done, chunk.end)
            (report.updated if previous else report.added).append(doc.doc_id)
        doc_entries[doc.doc_id] = {
            "title": doc.title,
            "sha256": doc.content_hash,
            "stamp": _file_stamp(settings.corpus_dir, doc),
            "chars": len(doc.text),
            "kind": doc.kind,
        }
        # Where pages and sections start, for citations ("report.pdf · p. 12 · 3.2 Results").
        if doc.pages:
            doc_entries[doc.doc_id]["pages"] = [list(mark) for mark in doc.pages]
        if doc.sections:
            doc_entries[doc.doc_id]["sections"] = [list(mark) for mark in doc.sections]
    progress.close()
    for doc_id in sorted(unreadable_but_indexed - present):
        rows = old_chunks_by_doc.get(doc_id, [])
        chunks.extend(old.chunks[r] for r in rows)
        terms.extend(old.terms[r] for r in rows)
        doc_entries[doc_id] = old_docs[doc_id]
    report.removed = sorted(set(old_docs) - present - unreadable_but_indexed)

    # Files that could not be read are recorded with their stamps, so that a staleness check does
    # not take them for a change on every question (see Assistant.is_stale).
    skipped = {
        e.doc_id: {"reason": e.reason, "stamp": _path_stamp(settings.corpus_dir / e.doc_id)}
        for e in report.skipped
        if e.doc_id not in doc_entries
    }
    same_backend = old is not None and old.manifest.get("vector_backend", "faiss") == settings.vector_backend
    if old is not None and not report.changed and skipped == old.manifest.get("skipped", {}) and same_backend:
        return  # nothing to write: the live generation is already current

    generation = _next_generation(settings.index_dir)
    new_store = _store_factory(settings, embedder.dim, generation)

    sentence_ids, where = _sentence_locations(chunks)

    def sentence_text(i: int) -> str:
        chunk = chunks[where[i] >> 16]
        s = chunk.sentences[where[i] & 0xFFFF]
        return normalize(chunk.text[s.start - chunk.start : s.end - chunk.start])

    # Texts to embed are made from the chunks a batch at a time (see _carry_vectors): a list of
    # every chunk's and sentence's normalised text would hold the corpus twice more.
    def carry_sentences() -> VectorStore:
        return _carry_vectors(
            sentence_ids,
            sentence_text,
            old.sentence_vectors if old else None,
            embedder.embed_passages,
            embedder.dim,
            "sentences",
            report,
            "embedded_sentences",
            settings.index_type,
            new_store,
        )

    chunk_ids = np.fromiter((int_id(c.chunk_id) for c in chunks), dtype=np.int64, count=len(chunks))
    if settings.chunk_vectors == "pooled":
        sentence_store = carry_sentences()
        chunk_store = _carry_vectors(
            chunk_ids,
            lambda row: chunks[row],
            old.chunk_vectors if old else None,
            lambda batch: _pooled(batch, sentence_store),
            embedder.dim,
            "chunks",
            report,
            "embedded_chunks",
            settings.index_type,
            new_store,
            by_length=False,  # no padding to save: pooling reads each chunk's sentences alone
        )
    else:
        chunk_store = _carry_vectors(
            chunk_ids,
            lambda row: chunks[row].search_text,
            old.chunk_vectors if old else None,
            embedder.embed_passages,
            embedder.dim,
            "chunks",
            report,
            "embedded_chunks",
            settings.index_type,
            new_store,
        )
        sentence_store = carry_sentences()

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    manifest = {
        "format": FORMAT_VERSION,
        "model": {"name": embedder.name, "dimension": embedder.dim, "normalized": True},
        "chunking": _chunking(settings),
        "versions": _versions(),
        "created": old.manifest["created"] if old else now,
        "updated": now,
        "corpus_dir": str(settings.corpus_dir),
        "vector_backend": settings.vector_backend,
        "counts": {"documents": len(doc_entries), "chunks": len(chunks), "sentences": len(sentence_ids)},
        "documents": doc_entries,
        "skipped": skipped,
    }
    _write_generation(settings.index_dir, manifest, chunks, terms, chunk_store, sentence_store, generation)


def _store_factory(settings: Settings, dim: int, generation: str) -> Callable[[str, int], VectorStore] | None:
    """How _carry_vectors makes a generation's store: None for FAISS (in memory, saved as a file)."""
    if settings.vector_backend == "faiss":
        return None
    from rag.milvus import MilvusStore, collection_name

    def new_store(label: str, expected: int):
        name = collection_name(settings.index_dir, generation, label)
        return MilvusStore.create(settings.milvus_uri, name, dim, settings.index_type, expected)

    return new_store


def _sentence_locations(chunks: list[Chunk]) -> tuple[np.ndarray, np.ndarray]:
    """Each distinct sentence key, in first-seen order, and where it first occurs.

    A location is `chunk row << 16 | sentence number` (a chunk holds far fewer than 65,536
    sentences): two int64 arrays instead of a dict of every sentence's text.
    """
    keys, where = array("q"), array("q")
    for row, chunk in enumerate(chunks):
        keys.extend(Index.sentence_keys(chunk))
        where.extend(row << 16 | n for n in range(len(chunk.sentences)))
    keys_np = np.frombuffer(keys, dtype=np.int64)
    first = np.sort(np.unique(keys_np, return_index=True)[1])  # overlapping chunks share sentences
    return keys_np[first], np.frombuffer(where, dtype=np.int64)[first]


def _pooled(chunks: list[Chunk], sentence_store: VectorStore) -> np.ndarray:
    """Each chunk's vector as the mean of its sentences' vectors, weighted by their length, normalised."""
    out = np.empty((len(chunks), sentence_store.dim), dtype=np.float32)
    for i, chunk in enumerate(chunks):
        vectors = sentence_store.get(np.array(Index.sentence_keys(chunk), dtype=np.int64))
        lengths = np.array([s.end - s.start for s in chunk.sentences], dtype=np.float32)
        pooled = lengths @ vectors
        out[i] = pooled / max(float(np.linalg.norm(pooled)), 1e-12)
    return out


def _carry_vectors(
    ids: np.ndarray,
    text_of: Callable[[int], object],
    old_store: VectorStore | None,
    embed: Callable[[list], np.ndarray],
    dim: int,
    label: str,
    report: RefreshReport,
    counter: str,
    index_type: str = "auto",
    new_store: Callable[[str, int], VectorStore] | None = None,
    by_length: bool = True,
) -> VectorStore:
    """A store holding a vector per id: old vectors reused by id, the rest made by `embed` from `text_of(i)`.

    Vectors go into an exact (flat) store a batch at a time, so no second copy of them all is
    held; a store large enough for IVF-PQ (or asked to be HNSW) is filled once from one matrix,
    since it is trained on, or built from, all of them: the peak is then twice the vectors.
    """
    store = new_store(label, len(ids)) if new_store else VectorStore(dim, index_type)
    if old_store is not None and len(old_store):
        reuse = np.isin(ids, old_store.ids())
    else:
        reuse = np.zeros(len(ids), dtype=bool)
    whole = None
    # Milvus builds its index itself, server-side: it is always filled a batch at a time.
    if new_store is None and choose_index_type(len(ids), index_type) != "flat":
        whole = np.empty((len(ids), dim), dtype=np.float32)
    filled = 0

    def put(part_ids: np.ndarray, vectors: np.ndarray) -> None:
        nonlocal filled
        if whole is None:
            store.add(part_ids, vectors)
        else:
            whole[filled : filled + len(part_ids)] = vectors
        filled += len(part_ids)

    kept = ids[reuse]
    for i in range(0, len(kept), 4096):
        put(kept[i : i + 4096], old_store.get(kept[i : i + 4096]))
    todo = np.flatnonzero(~reuse)
    # By length, as sentence-transformers orders the texts of one call: a batch then pads to
    # texts of about its own length. In document order, batches of 64 made the build 42% slower
    # than encoding the same texts in one call (bench/RESULTS.md).
    if by_length:
        todo = todo[np.argsort([len(text_of(int(r))) for r in todo], kind="stable")]
    for rows, vectors in _embed_in_batches(embed, todo, text_of, label):
        put(ids[rows], vectors)
    if whole is not None:
        store.add(np.concatenate([kept, ids[todo]]), whole)
    setattr(report, counter, getattr(report, counter) + len(todo))
    return store
