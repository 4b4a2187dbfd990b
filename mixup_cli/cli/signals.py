"""SIGINT and SIGTERM stop a run through the library's own cleanup.

The handler raises in the main thread (``KeyboardInterrupt``, or its
subclass ``Terminated`` for SIGTERM), so the library's ``except
BaseException`` paths remove the temporary files. A Python exception raised
from a signal handler can land in a finalizer and be swallowed there; the
signal is therefore also remembered, and ``check()`` (called on progress and
when the command returns) raises it again.
"""

from __future__ import annotations

import signal
import sys

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number

_pending: int | None = None


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered like Ctrl-C."""


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _on_signal(signum, frame):
    global _pending
    if _pending is not None:
        return  # already stopping: let the cleanup finish (SIGKILL still ends it at once)
    _pending = signum
    raise _exception(signum)


def _unraisable(info, _default=sys.unraisablehook):
    # The interruption swallowed by a finalizer is raised again by check(): no traceback.
    if _pending is not None and isinstance(info.exc_value, KeyboardInterrupt):
        return
    _default(info)


def install() -> None:
    """Handle SIGINT and SIGTERM, unless they were ignored when we started (nohup)."""
    for signum in EXIT_CODES:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_signal)
    sys.unraisablehook = _unraisable


def check() -> None:
    """Raise the interruption again if a signal arrived and its exception was lost."""
    if _pending is not None:
        raise _exception(_pending)


def describe(exc: KeyboardInterrupt) -> tuple[str, int]:
    """The signal's name and the exit code for an interruption."""
    signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
    return signal.Signals(signum).name, EXIT_CODES[signum]
