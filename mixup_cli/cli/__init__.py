"""The ``mixup`` command line: click commands only, over the library.

Each command lives in its own module; this one builds the group and turns
the library's exceptions into one-line messages and exit codes.
"""

from __future__ import annotations

import os
import sys

from . import signals

# Run as the command, the handlers go in before the heavy imports below: a
# signal then is remembered, and the command ends cleanly as it starts.
signals.install_early()

import logging  # noqa: E402

import click  # noqa: E402

from mixup_cli import __version__
from mixup_cli.errors import MixupError

from .augment import augment
from .inspect import inspect
from .preview import preview
from .verify import verify


class _StderrFormatter(logging.Formatter):
    def format(self, record):
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _quiet_abandoned_work() -> None:
    """After an interruption the message says what was kept; work other
    libraries had in flight (zarr's event loop) must not add Python's own
    reports of abandoned tasks and coroutines to stderr as the process exits."""
    import warnings

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


class MixupGroup(click.Group):
    """Maps library errors to ``Error: ...`` on stderr and the documented exit codes."""

    def invoke(self, ctx):
        signals.begin_command()
        try:
            result = super().invoke(ctx)
            signals.settle()
            name = signals.late()
            if name is not None:
                click.echo(
                    f"warning: {name} came too late to stop the run: the output was already being "
                    "put in place, and is complete",
                    err=True,
                )
            signals.check()
            return result
        except MixupError as exc:
            if ctx.meta.get("mixup.debug"):
                raise
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            _quiet_abandoned_work()
            name, code = signals.describe(exc)
            message = getattr(exc, "mixup_message", None)  # augment says what it kept
            click.echo(message or f"Interrupted by {name}: stopped and removed the temporary files.", err=True)
            ctx.exit(code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug or an unforeseen system error: still one line
            if ctx.meta.get("mixup.debug"):
                raise
            click.echo(f"Error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
            ctx.exit(1)


@click.group(cls=MixupGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="mixup")
def cli():
    """Apply mixup to datasets on disk, streaming, seeded, with per-row provenance.

    \b
    Example:
      mixup augment in.h5 out.h5 --alpha 0.2 --seed 7
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_StderrFormatter())
    logger = logging.getLogger("mixup_cli")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.WARNING)


cli.add_command(augment)
cli.add_command(verify)
cli.add_command(inspect)

cli.add_command(preview)


def _standard_streams() -> None:
    """Standard streams the shell closed (``2>&-``) become the null device,
    before anything else opens a file: otherwise the first file opened would
    take descriptor 2 and the messages meant for stderr would be written
    into it; and a run that cannot say anything still runs."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)  # the lowest free descriptor: this one
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name, fd, mode in (("stdout", 1, "w"), ("stderr", 2, "w")):
        if getattr(sys, name) is None:
            setattr(sys, name, open(fd, mode, closefd=False))


def main(args=None, prog_name="mixup"):
    _standard_streams()
    signals.install()
    try:
        signals.started()
        return cli.main(args=args, prog_name=prog_name)
    finally:
        signals.shutdown()
