"""SIGINT, SIGTERM and SIGHUP stop a run through the library's own cleanup.

The handler raises in the main thread (``KeyboardInterrupt``, or its
subclass ``Terminated`` for SIGTERM and SIGHUP: a terminal closed, an ssh
session dropped); ``augment`` then stops at a clean
checkpoint and keeps its partial files for ``--resume``. A Python exception
raised from a signal handler can land in a finalizer and be swallowed
there; the signal is therefore also remembered, and ``check()`` (called on
progress and just before the final commit) raises it again.

Never inside the threading machinery: an exception raised between a
``Condition``'s lock being taken and its ``with`` block being entered (or
the other way round on leaving) leaves the lock held for ever, and the
writer thread that needs it next never ends, nor the run that joins it.
Landing in ``threading`` or ``queue`` code, anywhere but a wait blocked
in ``acquire`` (written to be interrupted), the handler therefore only
remembers the signal and takes it again 10 ms later (SIGALRM).

Once the commit has begun (``finishing()``), nothing can stop the run any
more: a signal is only remembered, the run ends with exit 0, and ``late()``
says one came too late. The exit code always tells what is on disk.
"""

from __future__ import annotations

import os
import signal
import sys

EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + signal number
if hasattr(signal, "SIGHUP"):
    EXIT_CODES[signal.SIGHUP] = 129

_pending: int | None = None
_starting = False  # installed while the command imports: remember, never raise
_raised = False  # the interruption was raised in the main thread
_finishing = False
_late: list[int] = []
_RETRY_S = 0.01
_LOCK_MODULES = ("threading", "queue")  # looked up when needed: this module must import fast


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP), delivered like Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__()
        self.signum = signum


def _exception(signum: int) -> KeyboardInterrupt:
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


def _unsafe(frame) -> bool:
    """Whether raising in ``frame`` could leave a lock of ``threading`` or
    ``queue`` held. Their code is safe to break only where it waits,
    blocked in a lock's ``acquire`` (``Condition.wait``, ``Thread.join``):
    those waits are written to be interrupted."""
    if frame is None:
        return False
    where = frame.f_code.co_filename
    for name in _LOCK_MODULES:
        module = sys.modules.get(name)
        if module is not None and where == getattr(module, "__file__", None):
            break
    else:
        return False
    if frame.f_code.co_name in ("wait", "_wait_for_tstate_lock"):
        import linecache

        line = linecache.getline(where, frame.f_lineno)
        return bool(line) and ".acquire(" not in line  # no source to read: waits are the likely place
    return True


def _on_signal(signum, frame):
    global _pending, _raised
    if _starting:
        _pending = _pending or signum  # raised in the middle of an import, it would be a traceback
        return
    if _finishing:
        _late.append(signum)  # the commit goes on: raising now would report a failure that is not
        return
    if _raised:
        return  # already stopping: let the cleanup finish (SIGKILL still ends it at once)
    if _pending is None:
        _pending = signum
    if _unsafe(frame) and hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, _RETRY_S)  # SIGALRM: try again in a moment
        return
    _raised = True
    _disarm()
    raise _exception(_pending)


def _disarm() -> None:
    """Cancel a retry still pending: once the interruption is raised it has no
    more to do, and an alarm that fired while the interpreter exits (its
    handlers back to the defaults) would kill the process with SIGALRM."""
    if hasattr(signal, "setitimer"):
        signal.setitimer(signal.ITIMER_REAL, 0)


def shutdown() -> None:
    """The command has ended: no retry may fire any more."""
    _disarm()
    if hasattr(signal, "SIGALRM") and signal.getsignal(signal.SIGALRM) is _on_alarm:
        signal.signal(signal.SIGALRM, signal.SIG_IGN)


def _on_alarm(signum, frame):
    if _pending is not None and not _raised:
        _on_signal(_pending, frame)


def _unraisable(info, _default=sys.unraisablehook):
    # The interruption swallowed by a finalizer is raised again by check(): no traceback.
    if _pending is not None and isinstance(info.exc_value, KeyboardInterrupt):
        return
    _default(info)


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP, unless they were ignored when we started (nohup)."""
    for signum in EXIT_CODES:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _on_signal)
    if hasattr(signal, "SIGALRM"):
        signal.signal(signal.SIGALRM, _on_alarm)
    sys.unraisablehook = _unraisable


def install_early() -> None:
    """Install the handlers at once when this process is the ``mixup``
    command itself (not a test importing the package, nor a worker process
    started with "spawn" that imports the command's main module again)."""
    global _starting
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if name != "mixup" and not sys.argv[0].endswith(os.path.join("mixup_cli", "__main__.py")):
        return
    mp = sys.modules.get("multiprocessing.process")
    if mp is not None and getattr(mp.current_process(), "_inheriting", False):
        return
    _starting = True
    install()


def started() -> None:
    """The command begins: from now on signals stop it. One that came while
    it was starting ends it here, before anything was done."""
    global _starting
    _starting = False
    if _pending is not None:
        name = signal.Signals(_pending).name
        sys.stderr.write(f"Interrupted by {name} while starting: stopped before doing anything.\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_CODES[_pending])


def check() -> None:
    """Raise the interruption if a signal arrived: one put off (see above), or
    one whose exception was lost."""
    global _raised
    if _pending is not None and not _finishing:
        _raised = True
        _disarm()
        raise _exception(_pending)


def finishing() -> None:
    """The point of no return: from now on signals are remembered, never raised."""
    global _finishing
    check()  # an interruption swallowed earlier still stops the run, before anything is replaced
    _finishing = True


def between_outputs(caught) -> None:
    """One output of a set is committed and another follows: signals stop
    the run again; one that came during that commit (``caught``, or held as
    late) stops it now, before the next output starts."""
    global _finishing, _pending
    came = list(_late) + list(caught)
    _late.clear()
    _finishing = False
    if came and _pending is None:
        _pending = came[0]
    check()


def begin_command() -> None:
    """A command starts (several may run in one process, in tests): nothing finished yet."""
    global _finishing
    _finishing = False
    _late.clear()


def add_late(signums) -> None:
    """Signals the library held back during the commit itself."""
    _late[:0] = list(signums)


def late() -> str | None:
    """The first signal that came after the point of no return, by name; None if none did."""
    return signal.Signals(_late[0]).name if _late else None


def settle() -> None:
    """At the end of a finished command: later signals are ignored by the
    kernel, so the exit code stays the one the command chose (the
    interpreter would otherwise restore the default action while exiting)."""
    if _finishing:
        for signum in EXIT_CODES:
            if signal.getsignal(signum) is _on_signal:
                signal.signal(signum, signal.SIG_IGN)


def describe(exc: KeyboardInterrupt) -> tuple[str, int]:
    """The signal's name and the exit code for an interruption."""
    signum = getattr(exc, "signum", signal.SIGTERM) if isinstance(exc, Terminated) else signal.SIGINT
    return signal.Signals(signum).name, EXIT_CODES[signum]
