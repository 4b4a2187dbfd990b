"""``mixup verify OUT``: check an output against its provenance sidecar.

The checks, all run so that a report names everything that differs:

``output files``
    every file of OUT has the size (and SHA-256, when recorded) the sidecar
    records;
``output data``
    every array of OUT has the SHA-256 the sidecar records (see
    ``mixup_cli.record.digests``), hashed as ``recompute`` reads OUT, so OUT is
    read once; without the input, read back block by block;
``input files``
    the input (where the sidecar says, or ``input_path``) still has the
    recorded size and SHA-256;
``recompute``
    the output is computed again from the input and the sidecar's
    parameters, with the same plan, engine and per-task computation as
    ``mixup augment``, and compared row by row with OUT as it goes: memory
    is bounded as in a run (ARCHITECTURE.md, "Memory"). The first differing array and row are reported.

``law``
    OUT's own ``partner`` and ``lam`` arrays against the documented law of
    its pairing (``laws``).

Editing the sidecar's parameters (seed, alpha, pairing...) is caught by the
recomputation, since they no longer produce OUT.

The package: ``report`` (the report types and the file and digest checks),
``recomputation`` (what one output and a set's share: parameters, the
comparing run, scratch names), ``one`` (``verify``, ``recompute``),
``sets`` (``verify_set``: a set's OUTDIR, and one output of a set
recomputed from the whole set), ``laws`` (the ``law`` check from OUT's own
arrays).
"""

from mixup_cli.verify.laws import check_law
from mixup_cli.verify.one import recompute, verify
from mixup_cli.verify.recomputation import CompareWriter, compare
from mixup_cli.verify.report import Check, VerifyReport, check_array_digests, check_files, recorded_digests
from mixup_cli.verify.sets import SetVerifyReport, verify_set

__all__ = [
    "Check",
    "CompareWriter",
    "SetVerifyReport",
    "VerifyReport",
    "check_array_digests",
    "check_files",
    "check_law",
    "compare",
    "recompute",
    "recorded_digests",
    "verify",
    "verify_set",
]
