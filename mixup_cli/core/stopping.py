"""Stopping a run cooperatively: a ``StopToken`` asked to stop, checked at safe points.

Whoever wants a run to stop (the command's signal handler, a library
caller's thread, a GUI button) calls ``token.request(signum)``; that only
records the request (plain assignments: safe inside a signal handler, from
any thread). The run checks the token where stopping is safe: between two
batches and in every wait of the engines (which wake every 50 ms), between
the pieces of the passes over the input (classes, names, the scratch copy)
and of the index builds (neighbour search, projection fit, label kernel),
in ``verify``'s loops, while waiting for file hashes, between the outputs
of a set, and once more just before the final commit. Checks happen in the
run's own thread: ``current()`` is a context variable, which the threads a
run starts (writer, hashing) do not inherit, so they finish their work.
There ``check()`` raises the interruption: ``KeyboardInterrupt`` for
SIGINT, ``Terminated`` (a subclass) for SIGTERM and SIGHUP, so the
cleanup is the one any ``KeyboardInterrupt`` goes through (the partial
output kept for ``--resume`` at a checkpoint, the rest removed).

Once the commit has begun (``begin_commit()``), nothing stops the run: a
request is only remembered in ``late``, and the caller says it came too
late. Between two outputs of a set, ``end_commit()`` turns such a request
into a stop before the next output begins.

The token a run checks is the one passed to it (``augment(..., stop=)``);
the library reaches it through ``current()``, set for the call by
``using(token)``. Without one, nothing is checked and nothing is
installed: Ctrl-C in a Python session raises ``KeyboardInterrupt`` through
Python's own handler, wherever the main thread is, and the same cleanup
runs. Only a token stops a run at safe points and lets the commit finish
whatever arrives; ``handle_signals(token)`` installs handlers that do
nothing but ``token.request``.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from contextvars import ContextVar

# How often a wait wakes to look at the token: a stop is taken within about this long.
POLL_S = 0.05


class Terminated(KeyboardInterrupt):
    """SIGTERM (or SIGHUP), delivered like Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__()
        self.signum = signum


def interruption(signum: int) -> KeyboardInterrupt:
    """The exception a stop for ``signum`` raises."""
    return KeyboardInterrupt() if signum == signal.SIGINT else Terminated(signum)


class StopToken:
    """A request to stop a run, recorded at once and acted on at safe points.

    ``request(signum)``: ask the run to stop (SIGINT by default: it ends with
    ``KeyboardInterrupt``; SIGTERM/SIGHUP with ``Terminated``). The first
    request is the one acted on; later ones are remembered (``later``), or,
    once the commit has begun, listed in ``late``.
    """

    def __init__(self) -> None:
        self.signum: int | None = None  # the request acted on
        self.later: list[int] = []  # requests after it, before the commit
        self.late: list[int] = []  # requests once the commit had begun: too late to stop it
        self.committing = False

    def request(self, signum: int = signal.SIGINT) -> None:
        """Record a request to stop (safe in a signal handler: no lock, no allocation but a list's)."""
        if self.committing:
            self.late.append(signum)
        elif self.signum is None:
            self.signum = signum
        else:
            self.later.append(signum)

    def begin(self) -> None:
        """A run starts with this token: no commit has begun (a stop already
        requested stays requested: a token stops every run it is given to after)."""
        self.committing = False
        self.late.clear()

    @property
    def requested(self) -> bool:
        """Whether a stop is pending (not once the commit has begun)."""
        return self.signum is not None and not self.committing

    def check(self) -> None:
        """Raise the interruption if a stop was requested (never during the commit)."""
        if self.signum is not None and not self.committing:
            raise interruption(self.signum)

    def begin_commit(self) -> None:
        """The point of no return: a stop already requested is raised now,
        before anything is replaced; later requests are only listed in ``late``."""
        self.check()
        self.committing = True

    def end_commit(self) -> None:
        """A commit is done and more work follows (a set's next output): a
        request that came during it now stops the run, as any other would."""
        came, self.late = self.late, []
        self.committing = False
        if came and self.signum is None:
            self.signum = came[0]
            self.later.extend(came[1:])
        self.check()

    def late_name(self) -> str | None:
        """The first signal that came after the point of no return, by name; None if none did."""
        return signal.Signals(self.late[0]).name if self.late else None


class _Never(StopToken):
    """No token given: nothing ever stops the run at a safe point, and nothing
    of it changes (one object shared by every call)."""

    def request(self, signum: int = signal.SIGINT) -> None:
        raise RuntimeError("no stop token is in use: pass a StopToken to the call to stop it")

    def check(self) -> None:
        pass

    def begin_commit(self) -> None:
        pass

    def end_commit(self) -> None:
        pass

    def begin(self) -> None:
        pass


NEVER = _Never()
_current: ContextVar[StopToken] = ContextVar("mixup_stop", default=NEVER)


def current() -> StopToken:
    """The token of the run in progress (one that never stops when none was given)."""
    return _current.get()


def check() -> None:
    """A safe point: raise the interruption if the current run was asked to stop."""
    _current.get().check()


@contextmanager
def using(token: StopToken | None):
    """Make ``token`` the current one for the block (None: keep the current one)."""
    if token is None:
        yield current()
        return
    reset = _current.set(token)
    try:
        yield token
    finally:
        _current.reset(reset)


SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


@contextmanager
def handle_signals(token: StopToken):
    """SIGINT, SIGTERM and SIGHUP only recorded in ``token`` while the block runs
    (main thread only; signals ignored when the block starts stay ignored)."""
    previous = {}

    def record(signum, _frame):
        token.request(signum)

    try:
        for signum in SIGNALS:
            handler = signal.getsignal(signum)
            if handler is not signal.SIG_IGN:
                previous[signum] = handler
                signal.signal(signum, record)
        yield token
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
