"""The layering of ARCHITECTURE.md, checked over every import in mixup_cli/
(lazy ones inside functions included): a module imports only from its own
layer or lower ones, the import graph has no cycle, and click is imported
only under cli/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mixup_cli"

# Highest first. A name covers the module and everything under it.
LAYERS = [
    ("package", ["", "api"]),  # "": the package itself, its public names (imported lazily from api, dataset)
    ("cli", ["cli", "__main__"]),
    ("commands", ["pipeline", "verify", "preview", "describe", "lineage", "dataset", "sets.run"]),
    ("engines", ["engines"]),
    ("run", ["request", "source", "planning", "preflight", "resume", "sidecar", "scratch", "tasks", "sets"]),
    (
        "data",
        [
            "mixing",
            "sampling",
            "law",
            "verify.report",  # verify's report and its file and digest checks: files and arrays only
            "verify.laws",  # verify's law check: OUT's own arrays, none of the planner's code
            "balance",
            "groups",
            "exclude",
            "classes",
            "neighbours",
            "label_kernel",
            "cutmix",
            "gather",  # partner rows read by index, over a reader and its preparation
            "prepare",
            "labels",
            "names",
            "io",
            "digests",
            "provenance",
            "atomic",
        ],
    ),
    ("core", ["_version", "core", "errors", "_kernel", "beside", "threads", "stopping"]),
]
CLI_ONLY = {"click"}  # third-party modules only cli/ may import


def modules(package: Path) -> dict[str, Path]:
    """Dotted names below the package (``io.hdf5``; ``""`` for its ``__init__``) -> file;
    C sources too (``_kernel.c``: the extension module ``_kernel``)."""
    found = {}
    for path in [*package.rglob("*.py"), *package.rglob("*.c")]:
        parts = list(path.relative_to(package).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(package: Path) -> list[tuple[str, str, int]]:
    """Every import in the package, at module level or not: (module, imported, line).
    Imports of the package name the module they resolve to (``from x import y``
    names ``x.y`` when that is a module); others their top-level name."""
    mods, name = modules(package), package.name
    edges = []
    for mod, path in mods.items():
        if path.suffix != ".py":
            continue
        here = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package's own modules
                    base = [p for p in here[: len(here) - node.level + 1] if p]
                    origin = ".".join([name, *base, *([node.module] if node.module else [])])
                else:
                    origin = node.module or ""
                targets = [f"{origin}.{a.name}" for a in node.names]
                targets = [t if t.removeprefix(name + ".") in mods else origin for t in targets]
            else:
                continue
            for target in targets:
                edges.append((mod, _resolve(target, name, mods), node.lineno))
    return edges


def _resolve(target: str, name: str, mods) -> str:
    if target != name and not target.startswith(name + "."):
        return "<" + target.split(".")[0] + ">"  # third party
    inner = target[len(name) + 1 :]
    while inner and inner not in mods:
        inner = inner.rpartition(".")[0]
    return inner


def layer_of(module: str) -> int | None:
    """The layer of the longest name that covers ``module`` (``sets.run`` above ``sets``)."""
    best, found = -1, None
    for rank, (_, names) in enumerate(reversed(LAYERS)):
        for n in names:
            if (module == n or (n and module.startswith(n + "."))) and len(n) > best:
                best, found = len(n), rank
    return found


def violations(package: Path) -> list[str]:
    found, graph = [], {}
    for mod, target, line in imports(package):
        where = f"mixup_cli/{mod.replace('.', '/') or '__init__'}.py:{line}"
        if target.startswith("<"):
            if target[1:-1] in CLI_ONLY and layer_of(mod) != layer_of("cli"):
                found.append(f"{where}: imports {target[1:-1]} outside cli/")
            continue
        if target == mod:
            continue
        graph.setdefault(mod, set()).add(target)
        a, b = layer_of(mod), layer_of(target)
        if a is None or b is None:
            found.append(f"{where}: {mod or target!r} is in no layer of tests/test_layering.py")
        elif b > a:
            found.append(f"{where}: {mod} ({LAYERS[-1 - a][0]}) imports {target} ({LAYERS[-1 - b][0]}), a higher layer")
    found += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected group found (depth-first)."""
    cycles, state = [], {}

    def visit(node, path):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(path[path.index(nxt) :] + [nxt])
            elif nxt not in state:
                visit(nxt, path)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    return cycles


def test_the_package_keeps_its_layers():
    assert violations(PACKAGE) == []


def _plant(root: Path, files: dict[str, str]) -> Path:
    package = root / "mixup_cli"
    for rel, text in {"__init__.py": "", **files}.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


GOOD = {
    "core.py": "import numpy\n",
    "sampling.py": "from mixup_cli.core import x\n",
    "engines/__init__.py": "",
    "engines/local.py": "from mixup_cli import sampling\n",
    "pipeline.py": "from mixup_cli.engines import local\n",
    "cli/__init__.py": "import click\nfrom . import augment\n",
    "cli/augment.py": "def run():\n    from mixup_cli.pipeline import augment\n",
}


def test_a_planted_tree_that_keeps_the_layers_passes(tmp_path):
    assert violations(_plant(tmp_path, GOOD)) == []


@pytest.mark.parametrize(
    "module, text, expected",
    [
        # A lazy import inside a function is an edge like any other.
        (
            "engines/local.py",
            "def f():\n    from mixup_cli.pipeline import augment\n",
            r"engines/local.py:3: engines.local \(engines\) imports pipeline \(commands\), a higher layer",
        ),
        ("sampling.py", "from mixup_cli import engines\n", r"sampling \(data\) imports engines \(engines\)"),
        ("core.py", "from .cli import augment\n", r"core \(core\) imports cli.augment \(cli\)"),
        ("sampling.py", "import click\n", r"sampling.py:2: imports click outside cli/"),
        ("sampling.py", "from mixup_cli.mixing import Mixer\n", r"import cycle: sampling -> mixing -> sampling"),
        ("shards.py", "from mixup_cli import core\n", r"'shards' is in no layer"),
    ],
)
def test_a_back_edge_planted_in_a_small_tree_is_caught(tmp_path, module, text, expected):
    import re

    files = dict(GOOD, **{"mixing.py": "from mixup_cli.sampling import Plan\n"})
    files[module] = files.get(module, "") + text
    found = violations(_plant(tmp_path, files))
    assert any(re.search(expected, line) for line in found), found
