"""The on-disk index: immutable segments of chunks, vectors and BM25 postings, and generations naming them.

Layout, like Lucene's: `index_dir/seg-NNNNNN/` is a segment, written once and never changed: its
chunks (`chunks.jsonl`: text, offsets, sentences, search terms), their vectors and their sentences'
(`chunks.faiss`, `sentences.faiss`), and BM25 term frequencies (`bm25.json` + `bm25.bin`, raw
arrays memory-mapped on load). `index_dir/gen-NNNNNN/manifest.json` is a generation: the documents,
the segments that hold them, and per segment the documents deleted from it since it was written
(deletion markers). `index_dir/CURRENT` names the live generation and the sha256 of its manifest,
and the manifest holds each segment file's sha256, size and mtime.

A refresh reads only files whose size or mtime differ from what the index recorded, writes one
new segment for the added and edited documents (its chunks and sentences, their vectors, carried
by id when unchanged or embedded, and their postings), marks the old versions deleted, and writes
a new generation beside the old one; fsyncs, then atomically replaces CURRENT, so a crash leaves
either the old or the new index, never a mix. Its cost follows what changed, not the corpus:
no vector store is rebuilt or retrained, no BM25 matrix recomputed, no chunk file rewritten.

Segments merge (rag.indexing._merge_plan): when ten segments of about the same size (a power of
ten of chunks) have gathered, or a segment is mostly deleted, they are rewritten as one, without
their deleted chunks, in the same refresh; `rag index --optimize` merges everything into one. A
merge is a write like any other (new segment, new generation), so a crash mid-merge leaves the
old generation serving. IVF-PQ is trained only when a segment that large is written (rag.store).
Segments no generation names are deleted, as old generations are.

Loading reads every segment and presents one `Index`: vectors searched in each segment and merged,
deleted chunks filtered inside FAISS (rag.store.SegmentedStore), BM25 weighed with the
collection's document frequencies and average length (rag.lexical.SegmentedBM25), so a segmented
index ranks as a merged one would. Loading checks the manifest's checksum, each segment file's
size, and its sha256 when it is small (under 4 MB) or its mtime changed since it was written:
large segment files were verified when written and are not re-hashed on every start (trade-off:
damage that keeps a file's size and mtime shows only through `load_index(verify=True)` or when
the file fails to parse). Only JSON, FAISS files and raw arrays are read, never pickle.

With `vector_backend` milvus, `chunks.milvus.json` and `sentences.milvus.json` stand in for the
`.faiss` files: each names a Milvus collection made for that segment (rag.milvus). Milvus keeps
one segment: each refresh that changes something rewrites it whole, carrying vectors by id.
The replaced generation is deleted once `generation_grace_s` has passed, for replicas still
loading or serving it (_remove_stale).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
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
from rag.lexical import BM25, Postings, SegmentedBM25
from rag.store import BACKENDS, SegmentedStore, VectorStore, choose_index_type, load_store, store_file

# 2: chunk terms include pinyin and joined names (rag.crosslingual); 3: the BM25 matrix is saved;
# 4: segments and deletion markers
FORMAT_VERSION = 4
# How text becomes chunks and search terms; an index made another way is rebuilt on refresh, since
# its stored chunks and vectors would not match a question's. 1: Traditional Chinese searched as
# Simplified (rag.documents.normalize); 2: sentences by Blingfire, hard-wrapped lines joined.
TEXT_VERSION = 2


def _files(backend: str = "faiss") -> tuple[str, ...]:
    """A segment's files: with Milvus, descriptors of its collections stand in for the .faiss files."""
    return (
        "chunks.jsonl",
        store_file("chunks", backend),
        store_file("sentences", backend),
        *Postings.FILES,
    )


_FILES = _files("faiss")  # the default backend's

# Segment files at least this large are trusted from their recorded size and mtime on load (they
# were hashed when written); smaller ones, and any whose mtime changed, are hashed on every load.
TRUST_STAT_BYTES = 4 * 2**20
# A document's recorded (size, mtime) vouches for its content only when its mtime is this much
# older than the time it was read: a write in the same clock tick as the read could keep both.
RACY_NS = 2_000_000_000
# Size-tiered merging: segments are grouped by the power of ten of their live chunks (under
# MERGE_LEVEL_CHUNKS: level 0); MERGE_FACTOR segments of one level are merged into one, and a
# segment more than MAX_DELETED_SHARE deleted is rewritten.
MERGE_FACTOR = 10
MERGE_LEVEL_CHUNKS = 1000
MAX_DELETED_SHARE = 0.5


class IndexError_(RuntimeError):
    """The index on disk is missing, unreadable or was built with other settings."""


class IndexMissingError(IndexError_):
    pass


class IndexMismatchError(IndexError_):
    pass


def sentence_key(doc_id: str, text: str) -> int:
    """Sentence vectors are shared by the overlapping chunks that contain the sentence."""
    return normalized_sentence_key(doc_id, normalize(text))


def normalized_sentence_key(doc_id: str, normalized: str) -> int:
    """`sentence_key` of a sentence whose `normalize`d text the caller already has."""
    return int_id(f"{doc_id}\x00{normalized}")


@dataclass
class Index:
    """A loaded index generation: what retrieval and answering read."""

    manifest: dict
    chunks: list[Chunk]
    terms: list[list[str]]
    chunk_vectors: VectorStore
    sentence_vectors: VectorStore
    bm25: BM25  # over `terms`: each segment's postings, weighed at load (SegmentedBM25)
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
    merged_segments: int = 0  # old segments rewritten into merged ones
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
            "merged_segments": self.merged_segments,
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
        if self.merged_segments:
            lines.append(f"merged {self.merged_segments} segments")
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


def segment_folders(index_dir: Path) -> list[Path]:
    """The folders of the live generation's segments, in its order (none when there is no index)."""
    manifest = read_manifest(index_dir)
    return [index_dir / entry["name"] for entry in (manifest or {}).get("segments", [])]


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


def load_index(index_dir: Path, embedder: Embedder | None = None, verify: bool = False) -> Index:
    """Load the live generation, verifying checksums (see the module docstring) and, given an embedder, the model.

    `verify`: hash every segment file, however large. Only JSON and FAISS's own format are read:
    nothing in the index directory is unpickled or run.
    """
    pointer = _read_pointer(index_dir)
    for _attempt in range(3):
        try:
            index = _load_generation(index_dir, pointer, embedder, verify)
        except IndexMismatchError:
            raise
        except IndexError_:
            # A concurrent `rag index` may have made a new generation current and deleted this
            # one while it was being read: then read the new one; otherwise the damage is real.
            latest = _read_pointer(index_dir)
            if latest == pointer:
                raise
            pointer = latest
            continue
        latest = _read_pointer(index_dir)
        if latest == pointer:
            return index
        pointer = latest  # replaced while it was read: the newer generation is wanted
    return _load_generation(index_dir, _read_pointer(index_dir), embedder, verify)


@dataclass
class _Generation:
    """A generation's manifest, checked, and its segments' (manifest entry, folder)."""

    path: Path
    manifest: dict
    segments: list[tuple[dict, Path]]


def _open_generation(index_dir: Path, pointer: tuple[Path, str | None] | None, verify: bool = False) -> _Generation:
    """The generation `pointer` names, its manifest's checksum and every segment file checked."""
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
    backend = manifest.get("vector_backend", "faiss")
    if backend not in BACKENDS:
        raise IndexError_(f"index file {manifest_path} is damaged (unknown vector backend {backend!r}). {fix}")
    segments = manifest.get("segments")
    if not isinstance(segments, list) or not isinstance(manifest.get("documents"), dict):
        raise IndexError_(f"index file {manifest_path} is damaged (no segment list). {fix}")
    opened = []
    for entry in segments:
        name = entry.get("name") if isinstance(entry, dict) else None
        if (
            not isinstance(name, str)
            or not re.fullmatch(r"seg-\d{6}", name)
            or not isinstance(entry.get("deleted"), list)
        ):
            raise IndexError_(f"index file {manifest_path} is damaged (a malformed segment entry). {fix}")
        folder = index_dir / name
        if not folder.is_dir():
            raise IndexError_(f"index segment {folder} named in {manifest_path} is missing. {fix}")
        checksums, stats = entry.get("checksums") or {}, entry.get("files") or {}
        for file in _files(backend):  # every data file must have a checksum, not only the ones listed
            if file not in checksums:
                raise IndexError_(f"index file {manifest_path} is damaged (no checksum for {file}). {fix}")
            _verify_file(folder / file, checksums[file], stats.get(file), verify, fix)
        opened.append((entry, folder))
    return _Generation(gen, manifest, opened)


def _verify_file(path: Path, checksum: str, recorded, verify: bool, fix: str) -> None:
    """Size always; sha256 unless the file is large and its size and mtime are as when written and hashed."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IndexError_(f"index file {path} is missing. {fix}") from None
    except OSError as exc:
        raise IndexError_(f"cannot read {path}: {exc}. {fix}") from exc
    recorded = recorded if isinstance(recorded, list) and len(recorded) == 2 else None
    if recorded is not None and st.st_size != recorded[0]:
        raise IndexError_(f"index file {path} is damaged ({st.st_size} bytes, written as {recorded[0]}). {fix}")
    as_written = recorded is not None and st.st_mtime_ns == recorded[1]
    if as_written and not verify and st.st_size >= TRUST_STAT_BYTES:
        return
    try:
        actual = _checksum(path)
    except FileNotFoundError:
        raise IndexError_(f"index file {path} is missing. {fix}") from None
    except OSError as exc:
        raise IndexError_(f"cannot read {path}: {exc}. {fix}") from exc
    if actual != checksum:
        raise IndexError_(f"index file {path} is damaged (checksum mismatch). {fix}")


def _load_generation(
    index_dir: Path, pointer: tuple[Path, str | None] | None, embedder: Embedder | None, verify: bool = False
) -> Index:
    fix = "Run `rag index --rebuild` to rebuild it."
    generation = _open_generation(index_dir, pointer, verify)
    manifest = generation.manifest
    if embedder is not None:
        check_compatible(manifest, embedder.name, embedder.dim)
    files = _files(manifest.get("vector_backend", "faiss"))
    chunks: list[Chunk] = []
    terms: list[list[str]] = []
    chunk_parts, sentence_parts, postings = [], [], []
    try:
        for entry, folder in generation.segments:
            seg_chunks, seg_terms = _read_chunks(folder / files[0])
            deleted = set(entry["deleted"])
            live = None
            gone_chunks, gone_sentences = array("q"), array("q")
            if deleted:
                live = np.fromiter((c.doc_id not in deleted for c in seg_chunks), dtype=bool, count=len(seg_chunks))
                for chunk in (c for c in seg_chunks if c.doc_id in deleted):
                    gone_chunks.append(int_id(chunk.chunk_id))
                    gone_sentences.extend(Index.sentence_keys(chunk))
                seg_chunks = [c for c, keep in zip(seg_chunks, live) if keep]
                seg_terms = [t for t, keep in zip(seg_terms, live) if keep]
            seg_postings = Postings.load(*(folder / name for name in Postings.FILES))
            if seg_postings.n_docs != len(live if live is not None else seg_chunks):
                raise ValueError(f"{folder / 'bm25.json'} has {seg_postings.n_docs} rows for {len(seg_chunks)} chunks")
            chunks.extend(seg_chunks)
            terms.extend(seg_terms)
            postings.append((seg_postings, live))
            chunk_parts.append((load_store(folder / files[1]), np.frombuffer(gone_chunks, dtype=np.int64)))
            sentence_parts.append((load_store(folder / files[2]), np.frombuffer(gone_sentences, dtype=np.int64)))
        bm25 = SegmentedBM25(postings)
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        # Verified a moment ago: deleted by a concurrent writer since (load_index retries), or a disk fault.
        raise IndexError_(f"cannot read index generation {generation.path}: {exc}. {fix}") from exc
    return Index(
        manifest=manifest,
        chunks=chunks,
        terms=terms,
        chunk_vectors=_as_one_store(chunk_parts, manifest),
        sentence_vectors=_as_one_store(sentence_parts, manifest),
        bm25=bm25,
        path=generation.path,
    )


def _as_one_store(parts: list, manifest: dict):
    """One segment with nothing deleted is searched as itself (a fresh index, exactly as it was written)."""
    if len(parts) == 1 and not len(parts[0][1]):
        return parts[0][0]
    if not parts:
        return VectorStore(int(manifest["model"]["dimension"]))
    return SegmentedStore(parts)


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


def _next_segment(index_dir: Path, taken: int = 0) -> str:
    """Past every segment on disk (named or not, staged or not) and past `taken`."""
    names = (p.name.strip(".").split(".")[0][4:] for p in index_dir.glob("*seg-*"))
    numbers = [int(n) for n in names if n.isdigit()]
    return f"seg-{max([*numbers, taken], default=0) + 1:06d}"


def _write_segment(
    index_dir: Path,
    name: str,
    backend: str,
    chunks: list[Chunk],
    terms: list[list[str]],
    chunk_store: VectorStore,
    sentence_store: VectorStore,
) -> dict:
    """Write an immutable segment folder (staged, fsynced, renamed) and return its manifest entry.

    Each file is hashed as written; the entry records the hashes with each file's size and mtime
    (see _verify_file). Nothing names the segment until a generation does.
    """
    files = _files(backend)
    staging = index_dir / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with (staging / files[0]).open("w", encoding="utf-8") as fh:
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
    chunk_store.save(staging / files[1])
    sentence_store.save(staging / files[2])
    # Term frequencies only: the weights depend on every segment, and are computed on load.
    Postings.build(terms).save(*(staging / n for n in Postings.FILES))
    checksums = {n: _checksum(staging / n) for n in files}
    for n in files:
        with (staging / n).open("rb") as fh:
            os.fsync(fh.fileno())
    _fsync_dir(staging)
    final = index_dir / name
    os.rename(staging, final)
    _fsync_dir(index_dir)
    stats = {n: [(final / n).stat().st_size, (final / n).stat().st_mtime_ns] for n in files}
    return {
        "name": name,
        "chunks": len(chunks),
        "sentences": len(sentence_store),
        "deleted": [],
        "deleted_chunks": 0,
        "checksums": checksums,
        "files": stats,
    }


def _write_generation(index_dir: Path, manifest: dict, name: str | None = None) -> Path:
    """Write a generation (its manifest: segments are written before) and make it current."""
    name = name or _next_generation(index_dir)
    staging = index_dir / f".{name}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # One line: with an indent, json encodes in pure Python, ~1 s for a million chunks' manifest.
    manifest_bytes = json.dumps(manifest, ensure_ascii=False).encode("utf-8")
    with (staging / "manifest.json").open("wb") as fh:
        fh.write(manifest_bytes)
        fh.flush()
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
    """Delete generations CURRENT has not named for `grace_s` seconds, segments no remaining
    generation names, and staging folders a killed run left.

    Called with the lock held. A replaced generation is kept for `grace_s` seconds, timed from the
    first sweep that finds it replaced (right after CURRENT moves; recorded in its RETIRED file),
    for replicas still loading or serving it: a loaded index holds its data in memory except the
    BM25 term frequencies (bm25.bin), which it memory-maps, and a deleted file's pages stay
    readable while mapped on a local disk (POSIX) but not on NFS; the segments a kept generation
    names, and their Milvus collections, are kept with it. It is deleted by the first sweep after
    that (every refresh sweeps). A reader still verifying a generation that is deleted sees
    CURRENT moved and re-reads (see load_index).
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
    named = _named_segments(index_dir)
    if live is not None and named is not None:
        for segment in index_dir.glob("seg-*"):
            if segment.name not in named:
                _drop_collections(segment)
                shutil.rmtree(segment, ignore_errors=True)
    for stale in index_dir.glob(".seg-*.tmp"):
        _drop_collections(stale)
        shutil.rmtree(stale, ignore_errors=True)
    kept = [index_dir / n for n in sorted(named or ())]
    if any(any(folder.glob("*.milvus.json")) for folder in kept):
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


def _named_segments(index_dir: Path) -> set[str] | None:
    """Segments the generations on disk name; None when one cannot be read (then none is deleted)."""
    named: set[str] = set()
    for gen in index_dir.glob("gen-*"):
        try:
            st = (gen / "manifest.json").stat()
            key = (str(gen), st.st_size, st.st_mtime_ns)
            if key not in _SEGMENTS_OF:  # a manifest is never rewritten: parsed once per process
                manifest = json.loads((gen / "manifest.json").read_text(encoding="utf-8"))
                _SEGMENTS_OF.clear()
                _SEGMENTS_OF[key] = {entry["name"] for entry in manifest.get("segments", [])}
            named |= _SEGMENTS_OF[key]
        except (OSError, ValueError, TypeError, KeyError, AttributeError):
            return None
    return named


_SEGMENTS_OF: dict[tuple, set[str]] = {}


def _drop_collections(folder: Path) -> None:
    """A Milvus segment's collections go with its folder (pymilvus is imported only if it has some)."""
    if any(folder.glob("*.milvus.json")):
        from rag.milvus import drop_described

        drop_described(folder)


def _drop_orphan_collections(index_dir: Path, kept: list[Path]) -> None:
    """Collections of this index that no kept segment names: a refresh killed before its folder existed."""
    from rag.milvus import MilvusUnavailableError, drop_orphans

    try:
        descriptors = [json.loads(p.read_text(encoding="utf-8")) for f in kept for p in f.glob("*.milvus.json")]
        uri = os.environ.get("RAG_MILVUS_URI") or descriptors[0]["uri"]
        drop_orphans(uri, index_dir, {d["collection"] for d in descriptors})
    except (OSError, ValueError, KeyError, IndexError, MilvusUnavailableError):
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
    # int8 vectors differ (cosine 0.996) and one index holds one kind; bfloat16's agree with float32's
    # to cosine 0.99999, so "auto" may pick either on different machines without a rebuild.
    if settings.passage_precision == "int8":
        chunking["passage_precision"] = settings.passage_precision
    return chunking


def refresh_index(
    settings: Settings,
    embedder: Embedder,
    rebuild: bool = False,
    allow_empty: bool = False,
    prepared: PreparedCorpus | None = None,
    optimize: bool = False,
) -> RefreshReport:
    """Bring the index in `settings.index_dir` up to date with `settings.corpus_dir`.

    A corpus with no readable document never empties an index that holds some (it is more often
    an unmounted or mistyped folder than a deliberate deletion) unless `allow_empty` says so.
    With `prepared`, the corpus was read, chunked and embedded elsewhere (rag.ray_build).
    `optimize`: also merge every segment into one (see the module docstring).
    """
    if settings.vector_backend == "milvus" and not settings.milvus_uri:
        raise ValueError(
            "--vector-backend milvus needs --milvus-uri (RAG_MILVUS_URI): a Milvus Lite folder such as "
            "./milvus.db, or a server such as http://127.0.0.1:19530"
        )
    started = time.perf_counter()
    report = RefreshReport()
    scanned = time.time_ns()
    # Opened (and its manifest parsed: seconds at a million chunks) once, before the lock and the
    # corpus are read; used under the lock if no other writer made another generation current.
    pointer = _read_pointer(settings.index_dir)
    try:
        before = None if rebuild else _open_generation(settings.index_dir, pointer)
    except IndexError_:
        before = None
    # A file whose size and mtime are what the index recorded is not read again (see RACY_NS).
    trusted = _trusted_stamps(before.manifest if before else None, settings, embedder)
    unchanged: dict[str, list[int]] = {}

    def as_recorded(doc_id: str, path: Path) -> bool:
        stamp = trusted.get(doc_id)
        if stamp is not None and _path_stamp(path) == stamp:
            unchanged[doc_id] = stamp
            return True
        return False

    if prepared is None:
        documents, report.skipped = load_corpus(
            settings.corpus_dir,
            int(settings.max_document_mb * 2**20),
            settings.ocr_languages,
            settings.cache_dir,
            exclude=as_recorded if trusted else None,
        )
    else:  # read, chunked and embedded elsewhere (rag.ray_build): every document is here
        documents, report.skipped, embedder = prepared.documents, prepared.skipped, prepared.embedder
    with index_lock(settings.index_dir):
        current = before if before is not None and _read_pointer(settings.index_dir) == pointer else None
        old_manifest = current.manifest if current else read_manifest(settings.index_dir)
        indexed = len((old_manifest or {}).get("documents") or {})
        if not documents and not unchanged and indexed and not allow_empty:
            raise CorpusEmptyError(
                f"the corpus folder {settings.corpus_dir} has no readable documents, but the index holds "
                f"{indexed}: is the folder unmounted or mistyped? The index was left as it was; to empty "
                "it on purpose, run `rag index --allow-empty`."
            )
        old: _Generation | None = None
        report.rebuilt_because = "--rebuild requested" if rebuild and old_manifest else None
        report.rebuilt_because = report.rebuilt_because or _rebuild_reason(old_manifest, settings, embedder)
        if old_manifest is not None and report.rebuilt_because is None:
            try:
                old = current or _open_generation(settings.index_dir, _read_pointer(settings.index_dir))
            except IndexError_ as exc:
                report.rebuilt_because = f"the previous index could not be read ({exc})"
        # Files left unread on the word of a manifest that is not the one refreshed now (another
        # writer ran meanwhile, or it cannot be used) are read after all.
        old_docs = old.manifest["documents"] if old else {}
        recheck = sorted(d for d, stamp in unchanged.items() if (old_docs.get(d) or {}).get("stamp") != stamp)
        if recheck:
            for doc_id in recheck:
                del unchanged[doc_id]
            more, errors = _load_documents(settings, recheck)
            documents = sorted([*documents, *more], key=lambda d: d.doc_id)
            report.skipped = sorted([*report.skipped, *errors], key=lambda e: e.doc_id)
        _plan_and_write(
            settings,
            embedder,
            documents,
            sorted(unchanged),
            old,
            report,
            scanned,
            optimize,
            prepared.chunked if prepared else {},
        )
        _remove_stale(settings.index_dir, settings.generation_grace_s)
    report.seconds = time.perf_counter() - started
    return report


def optimize_index(settings: Settings, embedder: Embedder) -> RefreshReport:
    """Refresh, then merge every segment into one, without deleted chunks (`rag index --optimize`)."""
    return refresh_index(settings, embedder, optimize=True)


def _trusted_stamps(manifest: dict | None, settings: Settings, embedder: Embedder) -> dict[str, list[int]]:
    """{document: (size, mtime)} of the documents whose recorded stamp vouches for their content."""
    if manifest is None or manifest.get("format") != FORMAT_VERSION or _rebuild_reason(manifest, settings, embedder):
        return {}
    return {
        doc_id: entry["stamp"]
        for doc_id, entry in (manifest.get("documents") or {}).items()
        if isinstance(entry, dict) and isinstance(entry.get("stamp"), list) and not entry.get("stamp_unsure")
    }


def _load_documents(settings: Settings, doc_ids: list[str]) -> tuple[list[Document], list[LoadError]]:
    from rag.documents import DocumentError, load_document

    documents, errors = [], []
    for doc_id in doc_ids:
        try:
            documents.append(
                load_document(
                    settings.corpus_dir / doc_id,
                    doc_id,
                    int(settings.max_document_mb * 2**20),
                    settings.ocr_languages,
                    settings.cache_dir,
                )
            )
        except (OSError, DocumentError, UnicodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if not isinstance(exc, FileNotFoundError):  # removed meanwhile: it is gone, not unreadable
                errors.append(LoadError(doc_id, reason or type(exc).__name__))
    return documents, errors


def _plan_and_write(
    settings: Settings,
    embedder: Embedder,
    documents: list[Document],
    unchanged: list[str],
    old: _Generation | None,
    report: RefreshReport,
    scanned: int = 0,
    optimize: bool = False,
    chunked: dict[str, tuple[list[Chunk], list[list[str]]]] | None = None,
) -> None:
    """Chunk what is new, then write a segment for it, mark what it replaces deleted, merge, and
    write the generation that names the result."""
    old_docs = old.manifest["documents"] if old else {}
    chunked = chunked or {}
    by_id = {d.doc_id: d for d in documents}
    present = set(by_id) | set(unchanged)
    # A document that was indexed before but cannot be read now keeps its previous version:
    # a transient read error must not silently drop it from answers.
    unreadable_but_indexed = {e.doc_id for e in report.skipped if e.doc_id in old_docs}

    chunks: list[Chunk] = []
    terms: list[list[str]] = []
    doc_entries: dict[str, dict] = {}
    todo = sum(len(d.text) for d in documents if old_docs.get(d.doc_id, {}).get("sha256") != d.content_hash)
    progress = _progress(todo, "chunking", "char", 2_000_000)  # a large file takes a minute before embedding
    for doc_id in sorted(present):  # the corpus's order (rag.documents.iter_document_paths)
        doc, previous = by_id.get(doc_id), old_docs.get(doc_id)
        if doc is None:  # its file is as the index recorded it: not read
            doc_entries[doc_id] = previous
            report.unchanged.append(doc_id)
            continue
        entry = {
            "title": doc.title,
            "sha256": doc.content_hash,
            "stamp": _file_stamp(settings.corpus_dir, doc),
            "chars": len(doc.text),
            "kind": doc.kind,
        }
        # Where pages and sections start, for citations ("report.pdf · p. 12 · 3.2 Results").
        if doc.pages:
            entry["pages"] = [list(mark) for mark in doc.pages]
        if doc.sections:
            entry["sections"] = [list(mark) for mark in doc.sections]
        if entry["stamp"][1] >= scanned - RACY_NS:
            entry["stamp_unsure"] = True  # changed too recently for its stamp to vouch for it: read it again
        if previous and previous["sha256"] == doc.content_hash:
            entry.update({key: previous[key] for key in ("segment", "chunks", "sentences")})
            report.unchanged.append(doc_id)
        elif doc_id in chunked:  # chunked elsewhere (rag.ray_build), from this very text
            made_chunks, made_terms = chunked[doc_id]
            chunks.extend(made_chunks)
            terms.extend(_interned(t) for t in made_terms)
            progress.update(len(doc.text))
            entry.update(segment=None, chunks=0, sentences=0)  # set when its segment is written
            (report.updated if previous else report.added).append(doc_id)
        else:
            new_chunks = chunk_document(doc, embedder.count_tokens, settings.chunk_tokens, settings.chunk_overlap)
            chunks.extend(new_chunks)
            done = 0
            for chunk in new_chunks:
                terms.append(_interned(document_terms(chunk.search_text)))
                progress.update(max(0, chunk.end - done))
                done = max(done, chunk.end)
            entry.update(segment=None, chunks=0, sentences=0)  # set when its segment is written
            (report.updated if previous else report.added).append(doc_id)
        doc_entries[doc_id] = entry
    progress.close()
    for doc_id in sorted(unreadable_but_indexed - present):
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
    segments = [dict(entry) for entry, _ in old.segments] if old else []
    restamped = any((old_docs.get(d) or {}).get("stamp") != e.get("stamp") for d, e in doc_entries.items())
    merge_all = optimize and (len(segments) > 1 or any(s["deleted"] for s in segments))
    if old is not None and not report.changed and skipped == old.manifest.get("skipped", {}) and same_backend:
        if not restamped and not merge_all:
            return  # nothing to write: the live generation is already current

    # Deletion markers: an edited or removed document's chunks stay in their segment, marked deleted.
    by_name = {s["name"]: s for s in segments}
    for doc_id in report.updated + report.removed:
        previous = old_docs[doc_id]
        if previous.get("segment") in by_name:
            segment = by_name[previous["segment"]]
            segment["deleted"] = [*segment["deleted"], doc_id]
            segment["deleted_chunks"] += previous["chunks"]
    folders = {entry["name"]: folder for entry, folder in old.segments} if old else {}
    # Vectors of an edited document's unchanged chunks and sentences are carried from its old segment.
    carried_from = {old_docs[d]["segment"] for d in report.updated if old_docs[d].get("segment") in folders}
    carry = [folders[name] for name in sorted(carried_from)]
    segments = [s for s in segments if s["chunks"] > s["deleted_chunks"]]  # wholly deleted: dropped

    backend = settings.vector_backend
    # Milvus keeps one segment (it deletes nothing itself here): any change rewrites it whole, as
    # does a change of backend, which carries every vector over.
    whole = merge_all or (
        bool(segments) and (backend == "milvus" or not same_backend) and (report.changed or not same_backend)
    )
    writer = _SegmentWriter(settings, embedder, report, folders)
    if whole:
        segments = [writer.write(segments, chunks, terms, carry)] if segments or chunks else []
    else:
        if chunks:
            segments.append(writer.write([], chunks, terms, carry))
        written: dict[str, str] = {}
        for n, group in enumerate(_merge_plan(segments), start=1):
            names = {written.get(name, name) for name in group}
            merged = writer.write([s for s in segments if s["name"] in names], [], [], [])
            segments = [s for s in segments if s["name"] not in names] + [merged]
            written[f"merge-{n}"] = merged["name"]
    report.merged_segments = writer.merged
    for entry in segments:
        for doc_id, (n_chunks, n_sentences) in writer.documents.get(entry["name"], {}).items():
            doc_entries[doc_id] = {**doc_entries[doc_id], "segment": entry["name"], "chunks": n_chunks}
            doc_entries[doc_id]["sentences"] = n_sentences
    for doc_id in [*report.added, *report.updated]:
        if doc_entries[doc_id]["segment"] is None:  # no chunk (an empty document): nothing to delete later
            doc_entries[doc_id]["chunks"] = doc_entries[doc_id]["sentences"] = 0

    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    live_chunks = sum(s["chunks"] - s["deleted_chunks"] for s in segments)
    manifest = {
        "format": FORMAT_VERSION,
        "model": {"name": embedder.name, "dimension": embedder.dim, "normalized": True},
        "chunking": _chunking(settings),
        "versions": _versions(),
        "created": old.manifest["created"] if old else now,
        "updated": now,
        "corpus_dir": str(settings.corpus_dir),
        "vector_backend": backend,
        "counts": {
            "documents": len(doc_entries),
            "chunks": live_chunks,
            "sentences": sum(e.get("sentences", 0) for e in doc_entries.values()),
            "segments": len(segments),
        },
        "documents": doc_entries,
        "skipped": skipped,
        "segments": segments,
    }
    _write_generation(settings.index_dir, manifest)


def _merge_plan(segments: list[dict]) -> list[set[str]]:
    """Groups of segments to merge, smallest first: MERGE_FACTOR of one size level, or one mostly deleted.

    The level of a segment is the power of ten of its live chunks over MERGE_LEVEL_CHUNKS, so a
    chunk is rewritten about once per level it climbs: O(log n) merges per chunk, like Lucene's
    tiered policy. A merge's result may complete the next level: that merge follows in the plan.
    """

    def level(live: int) -> int:
        return 0 if live < MERGE_LEVEL_CHUNKS else int(math.log10(live / MERGE_LEVEL_CHUNKS)) + 1

    sizes = {s["name"]: s["chunks"] - s["deleted_chunks"] for s in segments}
    holes = [s["name"] for s in segments if s["deleted_chunks"] > MAX_DELETED_SHARE * s["chunks"]]
    plan: list[set[str]] = []
    pending = dict(sizes)
    while True:
        by_level: dict[int, list[str]] = {}
        for name, live in pending.items():
            by_level.setdefault(level(live), []).append(name)
        group = next((set(names) for _, names in sorted(by_level.items()) if len(names) >= MERGE_FACTOR), None)
        if group is None:
            holed = [name for name in holes if name in pending]
            if not holed:
                return plan
            group = {holed[0]}
        plan.append(group)
        # A later group names this merge's result "merge-N" (N from 1): the writer gives it its name.
        merged = f"merge-{len(plan)}"
        pending = {n: v for n, v in pending.items() if n not in group} | {merged: sum(pending[n] for n in group)}


class _SegmentWriter:
    """Writes segments for one refresh: new chunks, or old segments' live chunks merged, or both.

    Chunks go in document order (the corpus's), so a segment written from scratch holds what a
    fresh build would. Vectors are carried by id from `carry` (and the merged segments), the
    rest embedded.
    """

    def __init__(self, settings: Settings, embedder: Embedder, report: RefreshReport, folders: dict[str, Path]):
        self.settings, self.embedder, self.report = settings, embedder, report
        self.folders = dict(folders)  # segment name -> folder, for the old ones and those written now
        self.documents: dict[str, dict[str, tuple[int, int]]] = {}  # segment -> {document: (chunks, sentences)}
        self.merged = 0
        self._taken = 0

    def write(self, merged: list[dict], chunks: list[Chunk], terms: list[list[str]], carry: list[Path]) -> dict:
        settings, embedder = self.settings, self.embedder
        chunks, terms = list(chunks), list(terms)
        sources = []
        for entry in merged:
            folder = self.folders[entry["name"]]
            seg_chunks, seg_terms = _read_chunks(folder / "chunks.jsonl")
            deleted = set(entry["deleted"])
            for chunk, chunk_terms in zip(seg_chunks, seg_terms):
                if chunk.doc_id not in deleted:
                    chunks.append(chunk)
                    terms.append(chunk_terms)
            sources.append(folder)
            self.merged += 1
        sources += [f for f in carry if f not in sources]
        # By document (stably: a document's chunks keep their order), as a fresh build has them.
        order = sorted(range(len(chunks)), key=lambda row: chunks[row].doc_id)
        if order != list(range(len(chunks))):
            chunks, terms = [chunks[r] for r in order], [terms[r] for r in order]
        name = _next_segment(settings.index_dir, self._taken)
        self._taken = int(name[4:])
        old_chunks = old_sentences = None
        if sources:
            old_files = [_files_in(folder) for folder in sources]
            old_chunks = SegmentedStore(
                [
                    (load_store(folder / f[1], mapped=True), np.zeros(0, np.int64))
                    for folder, f in zip(sources, old_files)
                ]
            )
            old_sentences = SegmentedStore(
                [
                    (load_store(folder / f[2], mapped=True), np.zeros(0, np.int64))
                    for folder, f in zip(sources, old_files)
                ]
            )
        new_store = _store_factory(settings, embedder.dim, name)
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
                old_sentences,
                embedder.embed_passages,
                embedder.dim,
                "sentences",
                self.report,
                "embedded_sentences",
                settings.index_type,
                new_store,
            )

        chunk_ids = np.fromiter((int_id(c.chunk_id) for c in chunks), dtype=np.int64, count=len(chunks))
        # Pooled chunk vectors are made from the sentence vectors, so those come first.
        pooled = settings.chunk_vectors == "pooled"
        if pooled:
            sentence_store = carry_sentences()
        chunk_store = _carry_vectors(
            chunk_ids,
            (lambda row: chunks[row]) if pooled else (lambda row: chunks[row].search_text),
            old_chunks,
            (lambda batch: _pooled(batch, sentence_store)) if pooled else embedder.embed_passages,
            embedder.dim,
            "chunks",
            self.report,
            "embedded_chunks",
            settings.index_type,
            new_store,
            by_length=not pooled,  # pooling pads nothing: it reads each chunk's sentences alone
        )
        if not pooled:
            sentence_store = carry_sentences()
        entry = _write_segment(
            settings.index_dir, name, settings.vector_backend, chunks, terms, chunk_store, sentence_store
        )
        self.folders[name] = settings.index_dir / name
        counts: dict[str, list[int]] = {}
        for chunk in chunks:
            counts.setdefault(chunk.doc_id, [0, 0])[0] += 1
        for row in (where >> 16).tolist():
            counts[chunks[row].doc_id][1] += 1
        self.documents[name] = {doc_id: (n, m) for doc_id, (n, m) in counts.items()}
        return entry


def _files_in(folder: Path) -> tuple[str, ...]:
    """The files of a segment written with either backend."""
    return _files("milvus") if (folder / store_file("chunks", "milvus")).exists() else _files("faiss")


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
        reuse = old_store.contains(ids)
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
    # By length, so each call to the embedder holds texts of about one length (it then orders a
    # call's texts by tokens): a batch pads to texts like its own. In document order, batches of
    # 64 made the build 42% slower than encoding the same texts in one call (bench/RESULTS.md).
    if by_length:
        todo = todo[np.argsort([len(text_of(int(r))) for r in todo], kind="stable")]
    for rows, vectors in _embed_in_batches(embed, todo, text_of, label):
        put(ids[rows], vectors)
    if whole is not None:
        store.add(np.concatenate([kept, ids[todo]]), whole)
    setattr(report, counter, getattr(report, counter) + len(todo))
    return store
