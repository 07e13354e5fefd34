"""The `rag` command: index, ask, eval, serve; collection, user, feedback. Flags fall back to RAG_* variables."""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import textwrap
from pathlib import Path

from rag import collection
from rag.config import REPLICA_HELP, USER_SETTINGS, Settings, bundled, env_flag

EXAMPLES = """\
examples:
  rag ask "第二届长三角一体化发展高层论坛集中展示了多少项重大科技成果?"
  rag ask --json "Where was the 2023 symposium held?"
  rag index --corpus ~/my-docs --index-dir ~/my-docs-index
  rag index --ray ray-head:6379
  RAG_CORPUS_DIR=~/my-docs rag ask "What does the contract say about renewal?"
  rag eval --out eval/report
  rag eval --compare eval/report-before/report.json eval/report/report.json
  rag serve --port 7860
  RAG_INDEX_DIR=/shared/index rag serve --replica --port 7861
  rag collection create contracts --users alice,bob
  rag index --collection contracts
  rag ask --collection contracts "What does the contract say about renewal?"
  RAG_AUTH_FILE=~/rag-users.json rag user add alice
  RAG_AUTH_FILE=~/rag-users.json rag serve --host 0.0.0.0
  rag feedback export --out eval/feedback.jsonl
  RAG_LLM_BASE_URL=http://127.0.0.1:11434/v1 RAG_LLM_MODEL=qwen2.5:3b rag ask "Where was the 2023 symposium held?"
  rag eval --llm --llm-base-url http://127.0.0.1:8080/v1 --llm-model local --out eval/report-llm

environment variables (a flag wins over its variable):
""" + "\n".join(
    [f"  {s.env:<24} {s.flag}" for s in USER_SETTINGS]
    + [
        f"  {'RAG_HOME':<24} moves the index and model cache defaults under one folder",
        f"  {'RAG_HOST':<24} rag serve --host",
        f"  {'RAG_PORT':<24} rag serve --port",
        f"  {'RAG_AUTH_FILE':<24} rag serve / rag user --auth-file: the users file; without it, no login",
        f"  {'RAG_REPLICA':<24} rag serve --replica (1): serve an index another process writes",
    ]
)


def _add_settings_flags(parser: argparse.ArgumentParser) -> None:
    """Every user setting's flag, from the one table in rag.config (Settings' `option` fields)."""
    for s in USER_SETTINGS:
        parser.add_argument(
            s.flag,
            dest=s.name,
            type=s.kind,
            choices=s.choices,
            metavar=None if s.choices else "DIR" if s.type == "Path" else s.flag.split("-")[-1].upper(),
            help=s.help_text,
        )


def _settings(args: argparse.Namespace, resolve: bool = True) -> Settings:
    """The settings from flags and variables; with `resolve`, pointed at the chosen collection's folders."""
    settings = Settings.from_env(**{s.name: getattr(args, s.name, None) for s in USER_SETTINGS})
    if not resolve or settings.collection == collection.DEFAULT:
        return settings
    # RAG_CORPUS_DIR and RAG_INDEX_DIR only describe the default collection, so they may stay set
    # in a shell; a flag on the same command line as --collection contradicts it.
    moved = [
        flag for flag, name in (("--corpus", "corpus_dir"), ("--index-dir", "index_dir")) if getattr(args, name, None)
    ]
    if moved:
        raise ValueError(
            f"--collection {settings.collection} has its own corpus and index: "
            f"drop {' and '.join(moved)}, which set the default collection's"
        )
    return collection.get(settings.collection).settings(settings)


def _assistant(settings: Settings, refresh: bool = True):
    from rag.assistant import Assistant

    assistant = Assistant(settings)
    if refresh:
        try:
            report = assistant.ensure_index()
        except FileNotFoundError as exc:
            from rag.indexing import read_manifest

            if read_manifest(settings.index_dir) is None:
                raise
            # The corpus folder is gone or empty (an unmounted drive?): the index still answers, and is kept.
            print(f"warning: {str(exc).rstrip('.')}; answering from the existing index", file=sys.stderr)
            report = None
        if report is not None and report.changed:
            print(f"index refreshed: {report.summary()}", file=sys.stderr)
        elif report is not None and report.skipped:
            print(report.summary(), file=sys.stderr)
    return assistant


def cmd_index(args: argparse.Namespace) -> int:
    from rag.assistant import Assistant
    from rag.indexing import refresh_index

    settings = _settings(args)
    embedder = Assistant(settings).embedder
    prepared = None
    if args.ray is not None:  # read, chunk and embed on a Ray cluster; written here as locally
        from rag.ray_build import build_on_cluster

        built = build_on_cluster(settings, embedder, args.ray or os.environ.get("RAY_ADDRESS"), args.rebuild)
        print(built.summary(), file=sys.stderr)
        prepared = built.prepared
    report = refresh_index(
        settings,
        embedder,
        rebuild=args.rebuild,
        allow_empty=args.allow_empty,
        optimize=args.optimize,
        prepared=prepared,
    )
    if args.json:
        print(json.dumps({**report.to_json(), "index": str(settings.index_dir)}, ensure_ascii=False, indent=2))
        return 0
    print(
        report.summary()
        if report.changed or report.skipped or report.merged_segments
        else f"index is up to date ({len(report.unchanged)} documents)"
    )
    print(f"index: {settings.index_dir}")
    return 0


def _print_answer(answer, width: int = 100) -> None:
    print(textwrap.fill(answer.answer, width) if answer.language == "en" else answer.answer)
    _print_sources(answer)


def _print_sources(answer) -> None:
    sources = answer.nearest if answer.abstained else answer.citations
    if sources:
        print("\nNearest passages:" if answer.abstained else "\nSources:")
    for c in sources:
        print(f"[{c.n}] {c.place} (chars {c.start}-{c.end}, score {c.score:.3f}) {c.title}")
        snippet = " ".join(c.text.split())
        print(textwrap.indent(textwrap.shorten(snippet, 300, placeholder=" ..."), "    "))


def cmd_ask(args: argparse.Namespace) -> int:
    # One question, then the process ends: the cyclic garbage collector's passes over what
    # loading creates (the index, dictionaries, models) cost 0.15-0.25 s of a ~2 s answer and free
    # nothing worth having. Turned back on for callers that run commands in-process.
    collecting = gc.isenabled()
    gc.disable()
    try:
        return _ask(args)
    finally:
        if collecting:
            gc.enable()


def _ask(args: argparse.Namespace) -> int:
    from rag.assistant import QuestionError

    assistant = _assistant(_settings(args))
    question = " ".join(args.question)
    try:
        if args.json or assistant.llm is None:
            answer = assistant.ask(question)
        else:
            answer = _stream_answer(assistant, question)
            if answer is None:
                return 0
    except QuestionError as exc:
        print(f"rag ask: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(answer.to_json(), ensure_ascii=False, indent=2))
    else:
        _print_answer(answer)
    return 0


def _stream_answer(assistant, question: str):
    """Print the LLM's reply as it arrives; return the final Answer when it still has to be printed."""
    from rag.answer import Answer

    streamed = ""
    for item in assistant.ask_stream(question):
        if isinstance(item, str):
            streamed += item
            print(item, end="", flush=True)
            continue
        answer: Answer = item
    if not streamed:
        return answer
    print("\n")
    verification = answer.verification or {}
    if not verification.get("passed"):
        error = verification.get("error")
        print(f"rag ask: {error}" if error else "rag ask: the reply above failed citation checks:", file=sys.stderr)
        for reason in [] if error else verification.get("reasons", []):
            print(f"  - {reason}", file=sys.stderr)
        print("-" * 40)
        return answer
    if answer.abstained or " ".join(answer.answer.split()) != " ".join(streamed.split()):
        # Citations were renumbered (or the model said NOT_FOUND): show the final form.
        print("-" * 40)
        return answer
    _print_sources(answer)
    return None


def cmd_eval(args: argparse.Namespace) -> int:
    from rag import evaluate

    if args.compare:
        print(evaluate.compare_reports(Path(args.compare[0]), Path(args.compare[1])))
        return 0
    settings = _settings(args)
    if args.llm:
        from rag.llm import check_llm_settings, llm_configured

        if not llm_configured(settings):
            raise ValueError(
                "--llm needs an LLM server: set RAG_LLM_BASE_URL and RAG_LLM_MODEL "
                "(or --llm-base-url and --llm-model), or RAG_LLM_MODEL and RAG_LLM_API_KEY for OpenAI"
            )
        check_llm_settings(settings)
    else:  # the eval stays extractive (and reproducible) unless --llm asks otherwise
        settings = settings.with_(llm_base_url=None, llm_model=None)
    if args.calibrate:
        # Answer everything, then sweep the abstention threshold over the recorded evidence.
        settings = settings.with_(abstain_threshold=float("-inf"))
    # Every question from one generation: a `rag index` meanwhile is not followed mid-run (rag.live_index).
    assistant = _assistant(settings.with_(reload_check_s=float("inf")))
    report = evaluate.run_eval(assistant, [Path(p) for p in args.qa], progress=True)
    if args.calibrate:
        result = evaluate.calibrate(report["questions"])
        print(json.dumps({k: v for k, v in result.items() if k != "sweep"}, indent=1))
        print("set it with --abstain-threshold or RAG_ABSTAIN_THRESHOLD (default in rag/config.py)")
        return 0
    out = Path(args.out)
    evaluate.write_report(report, out)
    print(evaluate.summary_table(report))
    print(f"\nreport: {out / 'report.json'}, {out / 'report.md'}, {out / 'report.png'}")
    if args.check:
        floors = json.loads(Path(args.check).read_text(encoding="utf-8"))
        failures = evaluate.check_thresholds(report, floors, args.check_section)
        for failure in failures:
            print(f"below floor: {failure}", file=sys.stderr)
        return 1 if failures else 0
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from rag.web import main as serve

    argv = ["--host", args.host, "--port", str(args.port)]
    argv += ["--auth-file", args.auth_file] if args.auth_file else []
    argv += ["--insecure-open"] if args.insecure_open else []
    argv += ["--replica"] if args.replica else []
    return serve(argv, settings=_settings(args, resolve=False))


def cmd_collection(args: argparse.Namespace) -> int:
    base = _settings(args, resolve=False)
    users = _user_list(args.users) if getattr(args, "users", None) is not None else None
    if args.action == "create":
        created = collection.create(args.name, users)
        corpus = created.corpus_dir(base)
        print(f"created collection {created.name!r}: put its documents in {corpus}")
        print(f"then: rag index --collection {created.name}")
    elif args.action == "access":
        if (users is None) == (not args.shared):
            raise ValueError("give --users NAME,... to restrict the collection, or --shared to open it to everyone")
        changed = collection.set_access(args.name, users)
        print(f"{changed.name}: {_access(changed)}")
    elif args.action == "delete":
        found = collection.get(args.name)
        count = collection.document_count(found, base)
        if count and not args.yes:
            raise ValueError(
                f"collection {args.name!r} holds {count} documents in {found.corpus_dir(base)}: "
                "add --yes to delete them with its index"
            )
        print(f"deleted collection {args.name!r} ({collection.delete(args.name)})")
    else:
        for c in collection.list_collections():
            print(f"{c.name}\t{collection.document_count(c, base)} documents\t{_access(c)}\t{c.corpus_dir(base)}")
    return 0


def _user_list(text: str) -> list[str]:
    from rag.auth import validate_user

    return [validate_user(name.strip()) for name in text.split(",") if name.strip()]


def _access(c: collection.Collection) -> str:
    return "shared" if c.users is None else "users: " + (", ".join(c.users) or "(none)")


def _auth_path(args: argparse.Namespace) -> Path:
    from rag.auth import auth_file

    path = Path(args.auth_file).expanduser() if args.auth_file else auth_file()
    if path is None:
        raise ValueError("no users file: set RAG_AUTH_FILE or give --auth-file FILE")
    return path


def _read_password(name: str) -> str:
    """From the terminal without echo; from stdin (its first line) when a script pipes it in."""
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\r\n")
    import getpass

    password = getpass.getpass(f"password for {name}: ")
    if getpass.getpass("again: ") != password:
        raise ValueError("the two passwords differ; nothing was changed")
    return password


def cmd_user(args: argparse.Namespace) -> int:
    from rag import auth

    path = _auth_path(args)
    if args.action == "add":
        auth.validate_user(args.name)
        new = auth.add_user(path, args.name, _read_password(args.name))
        print(f"{'added' if new else 'changed the password of'} {args.name} in {path}")
    elif args.action == "remove":
        auth.remove_user(path, args.name)
        print(f"removed {args.name} from {path}")
    else:
        for name in auth.list_users(path):
            print(name)
    return 0


def cmd_feedback(args: argparse.Namespace) -> int:
    from rag.history import History, eval_case

    disliked = History().feedback(rating=-1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", encoding="utf-8") as fh:
        for item in disliked:
            fh.write(json.dumps(eval_case(item), ensure_ascii=False) + "\n")
    print(f"wrote {len(disliked)} 👎 answers to {out}: fill in each row's 'answers', then rag eval --qa {out}")
    return 0


def _subcommand(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A command with the examples as its epilog and a flag for every setting."""
    parser = sub.add_parser(name, help=help, epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_settings_flags(parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rag",
        description="Offline, bilingual (English/Chinese) question answering over your documents, with cited answers.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = _subcommand(sub, "index", "build or refresh the index (only what changed)")
    p.add_argument("--rebuild", action="store_true", help="re-embed everything from scratch")
    p.add_argument(
        "--optimize",
        action="store_true",
        help="also merge the index's segments into one, dropping deleted chunks (re-embeds nothing)",
    )
    p.add_argument("--json", action="store_true", help="print what changed and what was skipped (with why) as JSON")
    p.add_argument(
        "--allow-empty",
        action="store_true",
        help="let a corpus folder with no readable documents empty the index (refused otherwise: "
        "an unmounted or mistyped folder looks empty too)",
    )
    p.add_argument(
        "--ray",
        nargs="?",
        const="",
        metavar="ADDRESS",
        help="read, chunk and embed on a Ray cluster (pip install 'rag[ray]'): ADDRESS, else RAY_ADDRESS; "
        "'auto' or none starts a local one unless this machine runs one",
    )
    p.set_defaults(func=cmd_index)

    p = _subcommand(sub, "ask", "answer a question with cited sources")
    p.add_argument("--json", action="store_true", help="print the answer as JSON")
    p.add_argument("question", nargs="+")
    p.set_defaults(func=cmd_ask)

    p = _subcommand(sub, "eval", "run the eval suite and write a report")
    p.add_argument(
        "--qa",
        nargs="+",
        default=[str(bundled("eval") / "qa.jsonl")],
        help="JSONL files of questions, read as one set (default: the bundled eval/qa.jsonl)",
    )
    p.add_argument("--out", default="eval/report", help="folder for report.json/.md/.png")
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="choose the abstention threshold on the non-heldout questions and print it",
    )
    p.add_argument(
        "--check",
        metavar="THRESHOLDS",
        help="exit 1 when a metric is below its floor in this JSON file (eval/thresholds.json)",
    )
    p.add_argument(
        "--check-section",
        metavar="NAME",
        help="the floors of another eval in that file, e.g. xquad (default: the bundled eval's)",
    )
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print differences of two reports")
    p.add_argument(
        "--llm",
        action="store_true",
        help="answer through the configured LLM server (--llm-base-url/--llm-model or RAG_LLM_*)",
    )
    p.set_defaults(func=cmd_eval)

    p = _subcommand(sub, "serve", "start the web chat (builds or refreshes the index first)")
    p.add_argument("--host", default=os.environ.get("RAG_HOST", "127.0.0.1"), help="address to listen on [RAG_HOST]")
    p.add_argument("--port", type=int, default=int(os.environ.get("RAG_PORT", "7860")), help="[RAG_PORT]")
    p.add_argument(
        "--auth-file",
        default=None,
        metavar="FILE",
        help="users file (rag user add); each user sees their own conversations [RAG_AUTH_FILE]",
    )
    p.add_argument(
        "--insecure-open",
        action="store_true",
        help="listen on a non-loopback --host without a users file: anyone who reaches it can ask",
    )
    p.add_argument("--replica", action="store_true", default=env_flag("RAG_REPLICA"), help=REPLICA_HELP)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "collection",
        help="create, list, share or delete named collections (a corpus folder with its own index)",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_collection)
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("create", help="an empty collection under RAG_HOME/collections/NAME")
    a.add_argument("name")
    a.add_argument("--users", metavar="NAME,...", help="only these users may see it (default: shared)")
    a = actions.add_parser("access", help="restrict a collection to named users, or share it")
    a.add_argument("name")
    a.add_argument("--users", metavar="NAME,...", help="only these users may see it")
    a.add_argument("--shared", action="store_true", help="everyone may see it")
    a = actions.add_parser("delete", help="delete a collection's folder: documents, index and metadata")
    a.add_argument("name")
    a.add_argument("--yes", action="store_true", help="delete even though it holds documents")
    actions.add_parser("list", help="each collection: documents, access and folder")

    p = sub.add_parser(
        "user",
        help="add, list or remove users of the web chat's login",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--auth-file", default=None, metavar="FILE", help="the users file [RAG_AUTH_FILE]")
    p.set_defaults(func=cmd_user)
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("add", help="add a user or change their password (asked for, or a line on stdin)")
    a.add_argument("name")
    a = actions.add_parser("remove", help="remove a user")
    a.add_argument("name")
    actions.add_parser("list", help="the users' names")

    p = sub.add_parser(
        "feedback",
        help="export the chat's feedback",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.set_defaults(func=cmd_feedback)
    actions = p.add_subparsers(dest="action", required=True)
    a = actions.add_parser("export", help="the 👎 answers with their questions, as eval cases to complete")
    a.add_argument("--out", required=True, help="the JSONL file to write")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as exc:  # CollectionError, AuthError are ValueErrors
        print(f"rag {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
