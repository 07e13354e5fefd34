"""The `rag` help advertises only what parses, and flags, variables and README agree with Settings."""

from __future__ import annotations

import argparse
import re
import shlex
import sys
from pathlib import Path

import pytest

from rag.cli import build_parser
from rag.config import ENV_VARS, USER_SETTINGS, Settings

ROOT = Path(__file__).resolve().parent.parent
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


def _helps() -> dict[str, str]:
    """Each command's help, unwrapped: argparse wraps lines at hyphens, which would cut flags apart."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("COLUMNS", "1000")
        parser = build_parser()
        helps = {"rag": parser.format_help()}
        helps.update({f"rag {name}": sub.format_help() for name, sub in _subparsers(parser).items()})
    return helps


def _options(parser: argparse.ArgumentParser) -> set[str]:
    """A parser's flags, with those of its sub-commands' own sub-commands (`rag collection create --users`)."""
    options = {option for action in parser._actions for option in action.option_strings}
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return options.union(*(_options(sub) for action in nested for sub in action.choices.values()))


def _parses(command_line: str) -> None:
    """Parse an example as the shell would split it, without its leading VAR=value assignments."""
    words = shlex.split(command_line)
    while words and re.fullmatch(r"[A-Z_]+=.*", words[0]):
        words.pop(0)
    assert words[0] == "rag", command_line
    try:
        build_parser().parse_args(words[1:])
    except SystemExit as exc:
        pytest.fail(f"advertised but does not parse (exit {exc.code}): {command_line}")


@pytest.mark.parametrize("command", list(_helps()))
def test_every_example_in_the_help_parses(command: str):
    examples = [line.strip() for line in _helps()[command].splitlines() if re.match(r"\s+([A-Z_]+=\S+ )*rag ", line)]
    assert examples, f"{command} --help shows no example"
    for example in examples:
        _parses(example)


@pytest.mark.parametrize("command", list(_helps()))
def test_every_flag_in_the_help_exists(command: str):
    parser = build_parser()
    subs = _subparsers(parser)
    # The top-level help lists every subcommand's flags; a subcommand's help may name another's in examples.
    known = _options(parser).union(*(_options(sub) for sub in subs.values()))
    advertised = set(FLAG.findall(_helps()[command]))
    assert advertised and advertised <= known, sorted(advertised - known)


def test_each_variable_in_the_help_names_the_flag_of_the_same_setting(monkeypatch: pytest.MonkeyPatch):
    rows = re.findall(r"^  (RAG_[A-Z_]+)\s+(--[a-z-]+)$", build_parser().format_help(), re.M)
    assert {var for var, _ in rows} == set(ENV_VARS.values())
    subs = _subparsers(build_parser())
    for var, flag in rows:
        setting = next(s for s in USER_SETTINGS if s.env == var)
        assert setting.flag == flag
        kind = setting.type.removesuffix(" | None")
        value = setting.choices[-1] if setting.choices else {"int": "3", "float": "0.25"}.get(kind, "x")
        for name in ("ask", "index", "eval", "serve"):
            args = subs[name].parse_args([flag, value] + (["question"] if name == "ask" else []))
            from_flag = Settings.from_env(**{setting.name: getattr(args, setting.name)})
            monkeypatch.setenv(var, value)
            from_env = Settings.from_env()
            monkeypatch.delenv(var)
            default = getattr(Settings(), setting.name)
            assert getattr(from_flag, setting.name) == getattr(from_env, setting.name) != default


def test_a_variable_outside_its_choices_is_refused(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RAG_INDEX_TYPE", "annoy")
    with pytest.raises(ValueError, match="choose one of auto, flat, hnsw, ivfpq"):
        Settings.from_env()
    monkeypatch.setenv("RAG_INDEX_TYPE", "flat")
    monkeypatch.setenv("RAG_TOP_K", "five")
    with pytest.raises(ValueError, match="RAG_TOP_K='five' is not a valid int"):
        Settings.from_env()


def test_the_readme_configuration_tables_match_the_settings():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| `(--[a-z-]+)` \| `(RAG_[A-Z_]+)` \|", readme, re.M)
    assert {var: flag for flag, var in rows} == {s.env: s.flag for s in USER_SETTINGS}


def test_every_readme_command_parses():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if re.match(r"([A-Z_]+=\S+ )*rag ", line):
                _parses(line)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib")
def test_the_llm_server_test_builds_what_the_extra_declares():
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    source = (ROOT / "tests" / "test_llm_server.py").read_text(encoding="utf-8")
    built = re.search(r'^LLAMA_CPP_REQUIREMENT = "(.+)"$', source, re.M).group(1)
    assert extra["llm-server"] == [built]


def test_an_installed_package_reads_its_bundled_data_and_keeps_its_index_in_the_user_cache(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    import rag.config

    monkeypatch.setattr(rag.config, "IN_CHECKOUT", False)  # site-packages around the package, no repository
    monkeypatch.delenv("RAG_HOME")
    monkeypatch.delenv("RAG_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    settings = Settings()
    assert settings.corpus_dir == rag.config.PACKAGE_DIR / "data" / "corpus"
    assert rag.config.bundled("eval") == rag.config.PACKAGE_DIR / "data" / "eval"
    assert settings.index_dir == tmp_path / "xdg" / "rag" / "index"
    assert settings.cache_dir == tmp_path / "xdg" / "rag"
    monkeypatch.setenv("RAG_HOME", str(tmp_path / "home"))
    assert Settings().index_dir == tmp_path / "home" / "index"
