"""`tokbench push` / `tokbench pull`: copy runs between this machine's store and a fleet store."""

from __future__ import annotations

import argparse
import time

from rich.console import Console
from rich.markup import escape

from harness.common.errors import TokbenchError
from results import sync
from results.store import Store, is_url, masked

EXIT_OK, EXIT_SOME_LEFT = 0, 1


def _copy(source: Store, target: Store, refs: list[str], everything: bool, console: Console) -> int:
    if everything and refs:
        raise TokbenchError("give RUN ids or --all, not both")
    if not everything and not refs:
        raise TokbenchError("name the runs to copy (an id, a prefix, last, last~N) or pass --all")
    run_ids = sync.unsent(source, target) if everything else list(dict.fromkeys(
        source.resolve_run(ref) for ref in refs))
    left = 0
    start = time.perf_counter()
    for run_id in run_ids:
        try:
            copied = sync.copy_run(source, target, run_id)
        except TokbenchError as exc:
            console.print(f"[yellow]{escape(str(exc))}[/yellow]")
            left += 1
            continue
        console.print(escape(sync.describe(copied, str(target.path))), highlight=False)
    if everything and not run_ids:
        console.print(f"nothing to copy: {escape(str(target.path))} holds every ended run", highlight=False)
    elif len(run_ids) > 1:
        console.print(f"{len(run_ids) - left} of {len(run_ids)} runs in {time.perf_counter() - start:.1f} s",
                      highlight=False)
    return EXIT_SOME_LEFT if left else EXIT_OK


def push_after_run(store: Store, run_id: str, url: str, console: Console) -> bool:
    """`run --push URL`: copy the run just measured; on failure say so and keep it here (it is
    already committed trial by trial), for a later `tokbench push`."""
    try:
        target = Store(_other(url, "--push"))
        try:
            copied = sync.copy_run(store, target, run_id)
        finally:
            target.close()
    except TokbenchError as exc:
        console.print(f"[bold yellow]warning:[/bold yellow] run {run_id} not pushed ({escape(str(exc))}); "
                      f"it is kept in {escape(str(store.path))}: push it later with "
                      f"`tokbench push {run_id} --to {escape(masked(url))}`", highlight=False)
        return False
    console.print(escape(sync.describe(copied, masked(url))), highlight=False)
    return True


def _other(url: str, flag: str) -> str:
    if not is_url(url) and not url.endswith(".db"):
        raise TokbenchError(f"{flag} {url!r} is neither a postgresql:// URL nor a .db file: "
                            f"write {flag} postgresql://USER@HOST/DATABASE")
    return url


def cmd_push(args: argparse.Namespace, console: Console) -> int:
    source = Store(args.store, create=False)
    target = Store(_other(args.to, "--to"))
    try:
        return _copy(source, target, args.runs, args.all, console)
    finally:
        source.close()
        target.close()


def cmd_pull(args: argparse.Namespace, console: Console) -> int:
    source = Store(_other(args.source, "--from"), create=False)
    target = Store(args.store)
    try:
        return _copy(source, target, args.runs, args.all, console)
    finally:
        source.close()
        target.close()


def add_commands(sub: argparse._SubParsersAction) -> None:
    push = sub.add_parser("push", help="copy runs from this store (--store) to a fleet store: "
                                       "tokbench push RUN... --to postgresql://USER@HOST/DB")
    push.add_argument("runs", nargs="*", metavar="RUN", help="run id, prefix, last or last~N")
    push.add_argument("--to", required=True, metavar="URL",
                      help="the target store: a postgresql:// URL (password from ~/.pgpass or "
                           "$PGPASSWORD rather than the URL) or a .db file")
    push.add_argument("--all", action="store_true", help="every ended run the target lacks")
    push.set_defaults(func=cmd_push)
    pull = sub.add_parser("pull", help="copy runs from a fleet store into this store (--store): "
                                       "tokbench pull RUN... --from postgresql://USER@HOST/DB")
    pull.add_argument("runs", nargs="*", metavar="RUN",
                      help="run id, prefix, last or last~N (of the fleet store)")
    pull.add_argument("--from", dest="source", required=True, metavar="URL",
                      help="the store to copy from: a postgresql:// URL or a .db file")
    pull.add_argument("--all", action="store_true", help="every ended run this store lacks")
    pull.set_defaults(func=cmd_pull)
