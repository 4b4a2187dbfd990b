"""What OUTDIR holds of a set, for ``mixup verify OUTDIR`` and ``mixup
inspect OUTDIR``: its inputs, outputs present and missing, the parts seen
and done, and where each input is now (``input_paths``).

The set is found from OUTDIR's manifest (``mixup-set.json``: every input
with its absolute path, the outputs' names, the plan) and from the outputs'
sidecars (``identity.set_status``); either alone is enough. Nothing here
reads an array.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mixup_cli.core.errors import InputError, ParameterError
from mixup_cli.record import atomic, provenance
from mixup_cli.sets import identity
from mixup_cli.sets.inputs import Part, part_of, read_list
from mixup_cli.sets.layout import output_name


@dataclass
class SetView(identity.OutputsPresent):
    outdir: Path
    set_id: str
    outputs: int  # S
    rows: int
    inputs: list[dict] | None  # ordered: name, rows, offset, path (None where unknown)
    parameters: dict | None
    present: dict[int, Path] = field(default_factory=dict)
    parts: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (I, N) -> outputs it wrote
    sections: dict[int, dict] = field(default_factory=dict)
    interrupted: list[str] = field(default_factory=list)  # outputs with partial files left
    has_manifest: bool = False
    output_names: list[str] | None = None  # as the manifest lists them

    def name(self, k: int) -> str:
        """Output ``k``'s name in OUTDIR (its input's name, or that name without
        an extension that is no output format's: ``layout.output_name``)."""
        if self.output_names is not None and k < len(self.output_names):
            return self.output_names[k]
        if k in self.sections:
            return self.sections[k].get("output", self.sections[k]["input"]["name"])
        if self.inputs is None:
            return f"output {k} of {self.outputs}"
        return output_name(self.inputs[k]["name"], self.outdir) or self.inputs[k]["name"]

    def counts(self) -> list[int]:
        """The part counts N seen (``--shard I/N`` runs; 1 for a whole run)."""
        return sorted({n for _, n in self.parts})

    def parts_for(self, k: int) -> list[str]:
        """The parts that write output ``k``, one for each N seen (``I/N``)."""
        return [f"{part_of(k, self.outputs, n)}/{n}" for n in self.counts()]

    def command(self, parts: list[str]) -> str:
        """The command that writes an output of the set: its part of each ``--shard`` count seen."""
        seed = (self.parameters or {}).get("seed")
        command = f"mixup augment <the set's inputs> {self.outdir}" + (f" --seed {seed}" if seed is not None else "")
        shards = [p for p in parts if not p.endswith("/1")]
        return f"{command} --shard {shards[0]} --resume" if shards else f"{command} --resume"

    def who_writes(self, k: int) -> str:
        """What writes the missing output ``k``: the part and the command (one phrase)."""
        parts = self.parts_for(k)
        how = "an interrupted run left its partial files; " if self.name(k) in self.interrupted else ""
        shards = [p for p in parts if not p.endswith("/1")]
        if not shards:
            return f"{how}write it: {self.command(parts)}"
        return f"{how}part {' or '.join(shards)} writes it: {self.command(parts)}"

    def missing_problem(self, k: int) -> str:
        """One line about the missing output ``k``: its path, what is wrong, what writes it."""
        path = self.outdir / self.name(k)
        what = "missing" if not path.exists() else "not committed (no sidecar of this set)"
        return f"{path}: {what}; {self.who_writes(k)}"

    def parts_table(self) -> dict[int, dict]:
        """For each N seen: the parts done (every output assigned present) and not done."""
        table = {}
        for n in self.counts():
            done = [i for i in range(n) if all(k in self.present for k in Part(i, n).outputs(self.outputs))]
            table[n] = {"done": done, "not_done": [i for i in range(n) if i not in done]}
        return table


def is_set_dir(path: Path) -> bool:
    """Whether ``path`` is a set's OUTDIR (not a directory output with its own sidecar)."""
    path = Path(path)
    if not path.is_dir() or provenance.sidecar_path(path).exists():
        return False
    if (path / identity.MANIFEST).exists():
        return True
    return any(_records_a_set(p) for p in path.glob("*" + provenance.SIDECAR_SUFFIX))


def _records_a_set(sidecar: Path) -> bool:
    try:
        return "set" in provenance.read(sidecar)
    except InputError:
        return False


def read_set(outdir: Path) -> SetView:
    """The set in OUTDIR, from its manifest and sidecars (refused by name when
    they disagree, or when OUTDIR holds no set)."""
    outdir = Path(outdir)
    manifest = identity.read_manifest(outdir)
    status = identity.set_status(outdir)
    if manifest is None and status is None:
        raise InputError(
            f"{outdir}: holds no set (no {identity.MANIFEST}, no sidecar of a set's output); "
            "pass a set's OUTDIR or one output"
        )
    if manifest is not None and status is not None and manifest.get("set_id") != status.set_id:
        raise InputError(
            f"{outdir / identity.MANIFEST}: is of set {str(manifest.get('set_id'))[:12]}, the outputs' "
            f"sidecars of set {status.set_id[:12]}; an OUTDIR holds one set"
        )
    if manifest is not None:
        view = SetView(
            outdir,
            manifest["set_id"],
            len(manifest["inputs"]),
            int(manifest["rows"]),
            [dict(e) for e in manifest["inputs"]],
            manifest.get("parameters"),
            has_manifest=True,
            output_names=[str(n) for n in manifest.get("outputs") or []] or None,
        )
    else:
        inputs = [dict(e, path=None) for e in status.inputs] if status.inputs is not None else None
        view = SetView(outdir, status.set_id, status.outputs, status.rows, inputs, None)
    if status is not None:
        view.present, view.parts, view.sections = dict(status.present), dict(status.parts), dict(status.sections)
        for k, found in view.sections.items():  # each present output knows where its own input was
            if view.inputs is not None and view.inputs[k].get("path") is None:
                view.inputs[k]["path"] = found["input"].get("path")
        if view.parameters is None and view.present:
            view.parameters = provenance.read(provenance.sidecar_path(view.present[min(view.present)])).get(
                "parameters"
            )
    if view.inputs is not None:
        names = [view.name(k) for k in range(len(view.inputs))]
        view.interrupted = [name for name in names if atomic.partials(outdir / name, with_lock=False)]
    return view


def input_paths(view: SetView, override: Path | None = None) -> list[Path]:
    """Where the set's inputs are now, in order: as recorded (absolute paths),
    or ``override``: a folder holding them under their recorded names, or a
    list file (one path a line, as ``--inputs-from``) naming them in order."""
    if view.inputs is None:
        raise InputError(
            f"{view.outdir}: its sidecars do not list the set's {view.outputs} inputs and it has no "
            f"{identity.MANIFEST}; pass --input with a list of the inputs in order"
        )
    names = [e["name"] for e in view.inputs]
    if override is None:
        known = [Path(e["path"]) for e in view.inputs if e.get("path")]
        folder = known[0].parent if known else None  # an input recorded nowhere: beside the others
        return [Path(e["path"]) if e.get("path") else folder / e["name"] for e in view.inputs]
    override = Path(override)
    if override.is_dir():
        return [override / name for name in names]
    try:
        lines = override.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ParameterError(f"{override}: cannot read it as a list of inputs ({exc})", "--input") from None
    paths = read_list(lines, override.parent, str(override))
    if len(paths) != len(names):
        raise ParameterError(
            f"{override}: lists {len(paths)} inputs, the set has {len(names)}; list every input "
            "in the order of the run",
            "--input",
        )
    for k, (path, name) in enumerate(zip(paths, names)):
        if path.name != name:
            raise ParameterError(
                f"{override}: line {k + 1} names {path.name}, the set's input {k} is {name}; list "
                "the inputs in the order of the run, under their names",
                "--input",
            )
    return paths
