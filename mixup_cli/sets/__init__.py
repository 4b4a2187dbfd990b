"""Sharded sets: several inputs mixed as one dataset, their concatenation.

- ``inputs``: the inputs as given (arguments, ``--inputs-from``), ``--shard I/N``
  and which outputs each part writes;
- ``layout``: the inputs checked against each other (``inspect_inputs``), the
  outputs' paths, OUTDIR checks, row errors told by input;
- ``layout_record``: the checked layout a part records in OUTDIR, which later
  parts use instead of opening every input (``inspect_recorded``);
- ``reader``: ``ConcatReader``, the inputs read as one ``Reader``;
- ``restrict``: one plan over the set's rows, cut into one task list per output;
- ``identity``: ``set_id``, the sidecar's ``set`` section, OUTDIR's manifest
  and contents, and the set's status as its sidecars tell it;
- ``run`` (not imported here: it sits above the engines): ``augment_set``.
"""

from mixup_cli.sets.identity import (
    MANIFEST,
    SetStatus,
    check_outdir_contents,
    inputs_state,
    manifest,
    read_manifest,
    read_section,
    section,
    set_id,
    set_status,
    write_manifest,
)
from mixup_cli.sets.inputs import (
    WHOLE,
    Part,
    check_part_seed,
    collect_inputs,
    is_set_form,
    parse_shard,
    part_of,
    read_list,
)
from mixup_cli.sets.layout import (
    SetLayout,
    ShardInfo,
    check_outdir,
    check_storage_options,
    inspect_inputs,
    locate_rows,
    output_paths,
)
from mixup_cli.sets.reader import ConcatReader
from mixup_cli.sets.restrict import (
    check_plan,
    from_single,
    output_rows,
    plan_offsets,
    restrict,
    segment,
    split,
    task_slice,
    to_single,
    whole_task,
)

__all__ = [
    "MANIFEST",
    "manifest",
    "read_manifest",
    "write_manifest",
    "ConcatReader",
    "Part",
    "SetLayout",
    "SetStatus",
    "ShardInfo",
    "WHOLE",
    "check_outdir",
    "check_outdir_contents",
    "check_part_seed",
    "check_plan",
    "check_storage_options",
    "collect_inputs",
    "from_single",
    "inputs_state",
    "inspect_inputs",
    "is_set_form",
    "locate_rows",
    "output_paths",
    "output_rows",
    "parse_shard",
    "part_of",
    "read_list",
    "read_section",
    "restrict",
    "section",
    "segment",
    "set_id",
    "plan_offsets",
    "split",
    "set_status",
    "task_slice",
    "to_single",
    "whole_task",
]
