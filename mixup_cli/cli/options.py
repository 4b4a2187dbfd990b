"""Options shared by several commands, as small decorators."""

from __future__ import annotations

import click


def _set_debug(ctx, param, value):
    if value:
        ctx.meta["mixup.debug"] = True
        ctx.find_root().meta["mixup.debug"] = True


def debug_option(f):
    return click.option(
        "--debug",
        is_flag=True,
        expose_value=False,
        is_eager=True,
        callback=_set_debug,
        help="Show the full traceback on errors.",
    )(f)


def json_option(f):
    return click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout when done.")(f)


def quiet_option(f):
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar and no messages, errors aside.")(f)
