"""Collections: names, folders, access lists, the `rag collection` commands and `--collection`."""

from __future__ import annotations

from pathlib import Path

import pytest

from rag import collection
from rag.assistant import Assistant
from rag.cli import _settings, build_parser, main
from rag.collection import CollectionError, Library


@pytest.mark.parametrize("name", ["", ".", "..", "../etc", "a/b", "a\\b", ".hidden", "a b", "-x", "_x", "x" * 65])
def test_bad_names_are_refused(name: str):
    with pytest.raises(CollectionError, match="not a valid collection name"):
        collection.validate_name(name)
    with pytest.raises(CollectionError):
        collection.create(name)


@pytest.mark.parametrize("name", ["contracts", "team-2", "合同", "Q3_reports"])
def test_good_names_make_a_folder_under_the_collections_root(name: str, isolated_rag_home: Path):
    created = collection.create(name)
    assert created.folder == isolated_rag_home / "collections" / name
    assert (created.folder / "corpus").is_dir()


def test_default_always_exists_and_cannot_be_created_restricted_or_deleted():
    assert [c.name for c in collection.list_collections()] == ["default"]
    for attempt in (
        lambda: collection.create("default"),
        lambda: collection.delete("default"),
        lambda: collection.set_access("default", ["alice"]),
    ):
        with pytest.raises(CollectionError):
            attempt()


def test_a_restricted_collection_is_visible_only_to_its_users():
    collection.create("shared")
    collection.create("legal", users=["alice"])
    assert [c.name for c in collection.visible_to("alice")] == ["default", "legal", "shared"]
    assert [c.name for c in collection.visible_to("bob")] == ["default", "shared"]
    assert [c.name for c in collection.visible_to(None)] == ["default", "legal", "shared"]  # no login: all
    collection.set_access("legal", None)
    assert "legal" in [c.name for c in collection.visible_to("bob")]
    collection.set_access("legal", [])
    assert "legal" not in [c.name for c in collection.visible_to("alice")]


def test_a_user_without_access_cannot_ask_and_is_told_no_more_than_for_a_missing_one(settings, embedder):
    collection.create("legal", users=["alice"])
    library = Library(settings, Assistant(settings.with_(collection="default"), embedder))
    with pytest.raises(CollectionError) as denied:
        library.assistant("legal", "bob")
    with pytest.raises(CollectionError) as missing:
        library.assistant("nosuch", "bob")
    assert str(denied.value).replace("legal", "X") == str(missing.value).replace("nosuch", "X")


def test_the_library_answers_each_collection_from_its_own_index_and_keeps_it(settings, embedder):
    default = Assistant(settings.with_(collection="default"), embedder)
    default.refresh()
    library = Library(settings, default)
    notes = collection.create("notes")
    (notes.folder / "corpus" / "okapi.txt").write_text("The okapi harbour opens at dawn.\n", encoding="utf-8")
    assistant = library.assistant("notes", None)
    assert assistant.embedder is embedder  # one model for every collection
    assert assistant.settings.index_dir == notes.folder / "index"
    assert set(assistant.index.documents) == {"okapi.txt"}
    assert library.assistant("notes", None) is assistant
    assert library.assistant("default", None) is default
    collection.create("empty")
    empty = library.assistant("empty", None)  # an empty index until documents are added and refreshed
    assert empty.index.documents == {} and empty.ask("Who carries tourists?").abstained


def test_rag_collection_create_list_access_delete(capsys, isolated_rag_home: Path):
    assert main(["collection", "create", "legal", "--users", "alice,bob"]) == 0
    assert str(isolated_rag_home / "collections" / "legal" / "corpus") in capsys.readouterr().out
    assert main(["collection", "create", "legal"]) == 1
    assert "already exists" in capsys.readouterr().err
    assert main(["collection", "list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed[0].startswith("default\t") and "shared" in listed[0]
    assert listed[1].startswith("legal\t0 documents\tusers: alice, bob")
    assert main(["collection", "access", "legal", "--shared"]) == 0
    assert collection.get("legal").users is None
    assert main(["collection", "access", "legal"]) == 1  # neither --users nor --shared
    (isolated_rag_home / "collections" / "legal" / "corpus" / "a.txt").write_text("text", encoding="utf-8")
    capsys.readouterr()
    assert main(["collection", "delete", "legal"]) == 1  # it holds a document
    assert "holds 1 documents" in capsys.readouterr().err
    assert collection.get("legal")
    assert main(["collection", "delete", "legal", "--yes"]) == 0
    assert not (isolated_rag_home / "collections" / "legal").exists()
    assert main(["collection", "delete", "../x"]) == 1
    assert "not a valid collection name" in capsys.readouterr().err


def test_the_collection_flag_points_the_commands_at_its_folders(monkeypatch: pytest.MonkeyPatch):
    folder = collection.create("legal").folder
    args = build_parser().parse_args(["ask", "--collection", "legal", "q"])
    resolved = _settings(args)
    assert (resolved.corpus_dir, resolved.index_dir) == (folder / "corpus", folder / "index")
    monkeypatch.setenv("RAG_COLLECTION", "legal")
    assert _settings(build_parser().parse_args(["index"])).corpus_dir == folder / "corpus"


def test_the_collection_flag_refuses_a_corpus_or_index_flag_beside_it(capsys, tmp_path: Path):
    collection.create("legal")
    assert main(["index", "--collection", "legal", "--corpus", str(tmp_path)]) == 1
    assert "drop --corpus" in capsys.readouterr().err
    assert main(["ask", "--collection", "nosuch", "q"]) == 1
    assert "no collection named 'nosuch'" in capsys.readouterr().err


def test_the_default_collections_variables_do_not_stop_another_collection(monkeypatch: pytest.MonkeyPatch, tmp_path):
    folder = collection.create("legal").folder
    monkeypatch.setenv("RAG_CORPUS_DIR", str(tmp_path / "elsewhere"))
    resolved = _settings(build_parser().parse_args(["index", "--collection", "legal"]))
    assert resolved.corpus_dir == folder / "corpus"
