"""mixup-cli: apply mixup to datasets on disk, streaming, seeded, with provenance.

The public API is the names of this package's ``__all__``, and only those:

- ``augment(input, output, *, alpha=0.2, seed=None, ...)``: write a mixed
  copy of a dataset (or of a set of inputs) and its provenance sidecar, as
  ``mixup augment``; returns an ``AugmentSummary``;
- ``verify(output, *, input=None, ...)``: check an output (or a set's
  OUTDIR) against its sidecar, recomputing it; returns a report, prints nothing;
- ``lineage(output)``: the input rows each output row was made from (own,
  partner, lam, group), as ``mixup lineage``; a dict of numpy arrays;
- ``MixupDataset(output, names=None, *, image_format=None)``: an output, or
  a set's OUTDIR, read row by row for training (``len``, ``ds[i]``, batches);
- ``mix(x, y, lam, partner)``: the mixup formula on arrays in memory, with
  the command's dtype rules;
- ``StopToken()``: passed as ``stop=`` to ``augment``/``verify``, its
  ``request()`` stops the run at its next safe point, as a signal stops
  the command;
- the exceptions: ``MixupError`` and its kinds ``InputError``,
  ``OutputError`` and ``ParameterError``;
- ``__version__``.

Everything else, the modules ``mixup_cli.core``, ``mixup_cli.commands.pipeline``,
``mixup_cli.commands.dataset`` and the rest included, is internal: it may change in
any release. ``import mixup_cli`` is light (neither numpy nor h5py, click or
scikit-learn): the functions import what they need when first used.
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING

from mixup_cli._version import __version__
from mixup_cli.core.errors import InputError, MixupError, OutputError, ParameterError

if TYPE_CHECKING:
    from mixup_cli.api import AugmentSummary, StopToken, augment, lineage, mix, verify
    from mixup_cli.commands.dataset import MixupDataset

__all__ = [
    "AugmentSummary",
    "InputError",
    "MixupDataset",
    "MixupError",
    "OutputError",
    "ParameterError",
    "StopToken",
    "__version__",
    "augment",
    "lineage",
    "mix",
    "verify",
]

_FROM_API = ("AugmentSummary", "StopToken", "augment", "lineage", "mix", "verify")


def __getattr__(name: str):
    """The public functions, imported on first use (PEP 562)."""
    if name in _FROM_API:
        from mixup_cli import api

        value = getattr(api, name)
    elif name == "MixupDataset":
        from mixup_cli.commands.dataset import MixupDataset as value
    else:
        raise AttributeError(f"module 'mixup_cli' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """The package's module type: the internal package ``mixup_cli/verify/``
    shares its name with the public function ``verify``. Importing that
    package binds it on the package as usual; this keeps the function under
    the name. The module stays in ``sys.modules``: ``from mixup_cli.verify
    import ...`` reads it (``import mixup_cli.verify as v`` gives the function)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _FROM_API and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
