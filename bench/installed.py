"""What every benchmark starts with: the installed mixup-cli, with its compiled kernel.

A benchmark must measure what users run. Run from a checkout, a script would
otherwise import the source tree (``sys.path`` has the checkout when the
script puts it there, or ``python -m``/``-c`` from the repository root
has the current directory), which has no compiled kernel unless it was built
in place, and would silently time the numpy loop. So:

- ``import installed`` (first, before ``mixup_cli``) takes the checkout off
  ``sys.path`` and ``PYTHONPATH``: ``mixup_cli`` is then the installed package
  (``pip install .``; an editable install counts, it builds the kernel in place);
- ``installed.add_arguments(parser)`` adds ``--allow-numpy``;
- ``installed.check(args)`` exits 2 with one line saying how to build the
  kernel when ``mixup_cli.core.blend.KERNEL`` is not the compiled one, unless
  ``--allow-numpy`` was given;
- ``installed.env()``, ``installed.mixup()`` and ``installed.python()`` are the
  environment and commands for subprocesses, which then import the same package.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _is_repo(entry: str) -> bool:
    try:
        return Path(entry or os.getcwd()).resolve() == REPO
    except OSError:
        return False


def _without_repo(entries: list[str]) -> list[str]:
    return [e for e in entries if not _is_repo(e)]


sys.path[:] = _without_repo(sys.path)
try:
    import mixup_cli  # noqa: F401
except ImportError:
    print(
        "mixup-cli is not installed for this interpreter: run `pip install .` in the repository first", file=sys.stderr
    )
    raise SystemExit(2) from None

BUILD = (
    "the compiled kernel (mixup_cli._kernel) is not in use: build it with `pip install .` "
    "(or `python setup.py build_ext --inplace` for an editable checkout), or pass --allow-numpy "
    "to measure the numpy loop"
)


def add_arguments(parser) -> None:
    parser.add_argument(
        "--allow-numpy",
        action="store_true",
        help="run even when mixup_cli.core.blend.KERNEL is the numpy loop (figures are then not the installed kernel's)",
    )


def check(args) -> str:
    """The kernel in use (``"c"``); exit 2 when it is not, unless --allow-numpy."""
    from mixup_cli.core import blend

    if blend.KERNEL != "c" and not getattr(args, "allow_numpy", False):
        reason = " (MIXUP_CLI_KERNEL=numpy is set)" if os.environ.get("MIXUP_CLI_KERNEL") == "numpy" else ""
        print(f"{BUILD}{reason}", file=sys.stderr)
        raise SystemExit(2)
    return blend.KERNEL


def header() -> str:
    """One line for a benchmark's output: which package and loop were measured."""
    import mixup_cli
    from mixup_cli.core import blend

    return f"mixup-cli {mixup_cli.__version__} from {Path(mixup_cli.__file__).parent}; core.KERNEL = {blend.KERNEL!r}"


def env(**extra: str) -> dict[str, str]:
    """os.environ for a subprocess, without the checkout on PYTHONPATH."""
    found = dict(os.environ, **extra)
    path = _without_repo([p for p in found.get("PYTHONPATH", "").split(os.pathsep) if p])
    if path:
        found["PYTHONPATH"] = os.pathsep.join(path)
    else:
        found.pop("PYTHONPATH", None)
    return found


def python() -> list[str]:
    """This interpreter, never with the current directory first on sys.path
    (``-P``, Python 3.11+; on 3.10 run it from another directory)."""
    return [sys.executable, "-P"] if sys.version_info >= (3, 11) else [sys.executable]


def mixup() -> list[str]:
    """The installed ``mixup`` script of this interpreter (not a PATH shim)."""
    beside = Path(sys.executable).with_name("mixup")
    if beside.is_file() and os.access(beside, os.X_OK):
        return [str(beside)]
    found = shutil.which("mixup")
    return [found] if found else python() + ["-m", "mixup_cli"]
