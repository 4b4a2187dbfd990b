"""The progress bar of the commands that stream a dataset (augment, verify)."""

from __future__ import annotations

import sys

from mixup_cli.record import atomic


class BarProgress:
    """A tqdm bar on stderr, only when stderr is a terminal and not --quiet."""

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
        self._bar.update(rows)
        atomic.test_pause("progress")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
