"""Engines run a plan's tasks: ``local`` (this process, ``engines/local.py``)
or ``dask`` (a Dask cluster, ``engines/dask.py``; an optional extra, imported
only when asked for). Both implement one protocol,

    run(source, plan, writer, tasks, progress, *, skip, on_done, block_digests, **settings) -> dict

and compute every task with ``mixup_cli.run.tasks`` (``output_rows``), so they
write the same bytes. This module holds what both need (names, option
checks) and imports neither: ``pipeline`` picks one."""

from __future__ import annotations

from mixup_cli.core.errors import ParameterError

ENGINES = ("local", "dask")
EXTRA = "pip install 'mixup-cli[dask]'"


def check_engine_options(engine: str, scheduler: str | None, workers: int | None) -> None:
    """Refuse option combinations that cannot work (usage errors, exit 2)."""
    if engine not in ENGINES:
        raise ParameterError(f"--engine must be one of {', '.join(ENGINES)}, got {engine!r}", "--engine")
    if engine != "dask":
        for value, option in ((scheduler, "--scheduler"), (workers, "--workers")):
            if value is not None:
                raise ParameterError(f"{option} needs --engine dask", option)
        return
    if scheduler is not None and workers is not None:
        raise ParameterError(
            "--workers starts a local cluster and --scheduler uses an existing one; give only one",
            "--workers",
        )
    if workers is not None and int(workers) < 1:
        raise ParameterError(f"--workers must be an integer >= 1, got {workers!r}", "--workers")
    if scheduler is not None and not str(scheduler).strip():
        raise ParameterError("--scheduler needs an address such as tcp://host:8786", "--scheduler")
    import_distributed()


def import_distributed():
    """The ``distributed`` module, or a usage error naming the extra."""
    try:
        import dask  # noqa: F401
        import distributed
    except ImportError:
        raise ParameterError(
            f"--engine dask needs the optional Dask extra; install it with {EXTRA}", "--engine"
        ) from None
    return distributed
