"""Signals that end a run: SIGINT (Ctrl-C), SIGTERM (a cancelled CI job) and SIGHUP (a closed
terminal) all unwind the runner the same way, so workers' process groups are killed, the case
and the run are marked interrupted, and the trials already stored stay. The exit code is the
shell's: 128 + the signal's number (130, 143, 129)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """A run stopped by a signal (a KeyboardInterrupt, so every Ctrl-C path handles it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


_last = signal.SIGINT


def exit_code() -> int:
    """The exit code for the interruption that ended the last run (Ctrl-C: 130)."""
    return 128 + int(_last)


def describe(exc: BaseException) -> str:
    return f"interrupted by {exc.args[0]}" if isinstance(exc, Interrupted) else "interrupted by Ctrl-C"


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM and SIGHUP raise Interrupted as Ctrl-C raises
    KeyboardInterrupt (unless they were ignored when tokbench started, as under nohup). After
    the first, further ones are ignored so the clean-up finishes."""
    global _last
    _last = signal.SIGINT
    caught = (signal.SIGTERM, signal.SIGHUP)

    def handler(signum: int, _frame: FrameType | None) -> None:
        global _last
        _last = signal.Signals(signum)
        for s in caught:
            signal.signal(s, signal.SIG_IGN)
        raise Interrupted(signum)

    # a signal already ignored stays ignored: `nohup tokbench …` keeps running after a hangup
    previous = {s: signal.signal(s, handler) for s in caught if signal.getsignal(s) != signal.SIG_IGN}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
