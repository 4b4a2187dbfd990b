"""SIGINT, SIGTERM and SIGHUP stop a run through the library's own cleanup.

The handler only records the signal in the command's ``StopToken``
(``mixup_cli.core.stopping``): the first one is acted on, later ones are
remembered. The library checks the token at safe points (between batches,
in the engines' waits, between the pieces of an index build, in verify's
loops, between a set's outputs, just before the final commit) and raises
``KeyboardInterrupt`` (``Terminated`` for SIGTERM and SIGHUP: a terminal
closed, an ssh session dropped) there; ``augment`` then keeps its partial
files for ``--resume``. Nothing is ever raised from the handler itself, so
no exception lands in a lock's bookkeeping, a finalizer or a half-built
object.

Once the commit has begun (``StopToken.begin_commit``), nothing can stop
the run any more: a signal is only remembered, the run ends with exit 0, and
``late()`` says one came too late. The exit code always tells what is on disk.
"""

from __future__ import annotations

import os
import signal
import sys

from mixup_cli.core.stopping import SIGNALS, StopToken, Terminated

__all__ = ["EXIT_CODES", "Terminated", "describe", "install", "install_early", "started", "token"]

EXIT_CODES = {signum: 128 + int(signum) for signum in SIGNALS}  # 130 SIGINT, 143 SIGTERM, 129 SIGHUP

_token = StopToken()  # the command's: the handler records into it, the library checks it


def _on_signal(signum, _frame):
    _token.request(signum)  # nothing else: the run stops at its next safe point


def token() -> StopToken:
    """The token the command's run checks."""
    return _token


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP, unless they were ignored when we started (nohup)."""
    for signum in EXIT_CODES:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_signal)


def install_early() -> None:
    """Install the handlers at once when this process is the ``mixup``
    command itself (not a test importing the package, nor a worker process
    started with "spawn" that imports the command's main module again)."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name != "mixup" and not sys.argv[0].endswith(os.path.join("mixup_cli", "__main__.py")):
        return
    mp = sys.modules.get("multiprocessing.process")
    if mp is not None and getattr(mp.current_process(), "_inheriting", False):
        return
    install()


def started() -> None:
    """The command begins: a signal that came while it was starting ends it
    here, before anything was done."""
    if _token.signum is not None:
        name = signal.Signals(_token.signum).name
        sys.stderr.write(f"Interrupted by {name} while starting: stopped before doing anything.\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_CODES[_token.signum])


def begin_command() -> None:
    """A command starts (several may run in one process, in tests): no commit begun yet."""
    _token.begin()


def late() -> str | None:
    """The first signal that came after the point of no return, by name; None if none did."""
    return _token.late_name()


def shutdown() -> None:
    """The command has ended and chosen its exit code: later signals are
    ignored by the kernel (the interpreter would otherwise restore their
    default action while exiting, and one arriving then would change it)."""
    for signum in EXIT_CODES:
        if signal.getsignal(signum) is _on_signal:
            signal.signal(signum, signal.SIG_IGN)


def describe(exc: KeyboardInterrupt) -> tuple[str, int]:
    """The signal's name and the exit code for an interruption."""
    signum = getattr(exc, "signum", signal.SIGTERM) if isinstance(exc, Terminated) else signal.SIGINT
    return signal.Signals(signum).name, EXIT_CODES[signum]
