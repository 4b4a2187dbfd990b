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

from mixup_cli._version import __version__
from mixup_cli.core.errors import MixupError

from .augment import augment
from .inspect import inspect
from .lineage import lineage
from .preview import preview
from .verify import verify


class _StderrFormatter(logging.Formatter):
    def format(self, record):
        return f"{record.levelname.lower()}: {record.getMessage()}"


def _quiet_abandoned_work() -> None:
    """After an interruption the message says what was kept; work other
    libraries had in flight (zarr's event loop) must not add Python's own
    reports of abandoned tasks and coroutines to stderr. Set when the command
    starts: such a task is a reference cycle, which the garbage collector may
    destroy (and asyncio report) at any moment after the stop begins, before
    the interruption reaches this module."""
    import warnings

    logging.getLogger("asyncio").setLevel(logging.CRITICAL)
    warnings.filterwarnings("ignore", message="coroutine .* was never awaited", category=RuntimeWarning)


class OneLineUsageError(click.UsageError):
    """A usage error said in one line on stderr (exit 2): the command, what is
    wrong, and where its help is; click's own say Usage, Try, a blank line and Error."""

    def __init__(self, line: str, ctx=None):
        super().__init__(line, ctx)
        self.line = line

    def show(self, file=None) -> None:
        click.echo(self.line, err=True)


def one_line(exc: click.UsageError, command: str = "mixup") -> click.UsageError:
    """``exc`` as one line: ``mixup augment: no such option --alpah (did you mean
    --alpha?); see 'mixup augment --help'`` (``command``: where it was raised, when
    click did not say)."""
    if isinstance(exc, OneLineUsageError) or isinstance(exc, _HELP_ERRORS):
        return exc
    command = exc.ctx.command_path if exc.ctx is not None else command
    if isinstance(exc, click.NoSuchOption):
        what = f"no such option {exc.option_name}"
        if exc.possibilities:  # the closest first
            what += f" (did you mean {exc.possibilities[0]}?)"
    elif isinstance(exc, _NO_SUCH_COMMAND):
        what = f"no such command '{exc.command_name}'"
        if exc.possibilities:
            what += f" (did you mean {exc.possibilities[0]}?)"
    else:
        what = " ".join(exc.format_message().split()).rstrip(".")
        if what[:1].isupper() and what[1:2].islower():
            what = what[0].lower() + what[1:]
    return OneLineUsageError(f"{command}: {what}; see '{command} --help'", exc.ctx)


# click >= 8.4 names an unknown command and its near misses (before: one sentence, said as it is).
_NO_SUCH_COMMAND = tuple(
    getattr(click.exceptions, name) for name in ("NoSuchCommand",) if hasattr(click.exceptions, name)
)
# click >= 8.2 says "no arguments: here is the help" through a usage error that prints the help.
_HELP_ERRORS = tuple(
    getattr(click.exceptions, name) for name in ("NoArgsIsHelpError",) if hasattr(click.exceptions, name)
)


class MixupGroup(click.Group):
    """Maps library errors to ``Error: ...`` on stderr and the documented exit
    codes, and click's usage errors to one line (``one_line``), exit 2."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as exc:
            raise one_line(exc) from None

    def invoke(self, ctx):
        from mixup_cli.core import stopping

        signals.begin_command()
        _quiet_abandoned_work()
        try:
            with stopping.using(signals.token()):
                result = super().invoke(ctx)
            name = signals.late()
            if name is not None and not ctx.meta.get("mixup.quiet"):
                click.echo(
                    f"warning: {name} came too late to stop the run: the output was already being "
                    "put in place, and is complete",
                    err=True,
                )
            signals.token().check()  # a signal after the last safe point (none began a commit) still stops it
            return result
        except MixupError as exc:
            if ctx.meta.get("mixup.debug"):
                raise
            if exc.exit_code == 2:  # a usage error of the library's (ParameterError): said as click's are
                raise one_line(click.UsageError(str(exc)), _command(ctx)) from None
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt as exc:
            name, code = signals.describe(exc)
            message = getattr(exc, "mixup_message", None)  # augment says what it kept
            click.echo(message or f"Interrupted by {name}: stopped and removed the temporary files.", err=True)
            ctx.exit(code)
        except click.UsageError as exc:
            raise one_line(exc, _command(ctx)) from None
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as exc:  # a bug or an unforeseen system error: still one line
            if ctx.meta.get("mixup.debug"):
                raise
            click.echo(f"Error: {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
            ctx.exit(1)


def _command(ctx) -> str:
    """``mixup CMD`` once the command is known (set before its options are parsed), else ``mixup``."""
    sub = ctx.invoked_subcommand
    return f"{ctx.command_path} {sub}" if sub else ctx.command_path


def _show_version(ctx, param, value):
    """The version, and which mixing loop runs and why (``blend.KERNEL_REASON``)."""
    if not value or ctx.resilient_parsing:
        return
    from mixup_cli.core import blend

    click.echo(f"mixup, version {__version__}")
    click.echo(f"kernel: {blend.KERNEL} ({blend.KERNEL_REASON})")
    ctx.exit()


@click.group("mixup", cls=MixupGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-V",
    "--version",
    is_flag=True,
    expose_value=False,
    is_eager=True,
    callback=_show_version,
    help="Show the version and the mixing loop in use (compiled or numpy's, and why), and exit.",
)
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
cli.add_command(lineage)

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
