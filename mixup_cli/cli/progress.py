"""The progress bar of the commands that stream a dataset (augment, verify)."""

from __future__ import annotations

import sys

from mixup_cli import atomic

from . import signals


class BarProgress:
    """A tqdm bar on stderr, only when stderr is a terminal and not --quiet.

    Each update is also where a remembered SIGINT/SIGTERM stops the run
    (``signals.check``), between two batches.
    """

    def __init__(self, quiet: bool):
        self._quiet = quiet
        self._bar = None

    def start(self, total: int) -> None:
        from tqdm import tqdm  # only once a run starts: not on --help

        self._bar = tqdm(
            total=total,
            unit="rows",
            unit_scale=True,
            file=sys.stderr,
            desc="mixup",
            disable=self._quiet or not sys.stderr.isatty(),
            dynamic_ncols=True,
        )

    def update(self, rows: int) -> None:
        signals.check()
        self._bar.update(rows)
        atomic.test_pause("progress")

    def committing(self) -> None:
        signals.finishing()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
