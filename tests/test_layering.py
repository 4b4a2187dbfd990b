"""The layering of ARCHITECTURE.md, checked over every import in mixup_cli/
(lazy ones inside functions included): each folder of the package is a
layer, and a folder imports only from itself and the folders below it; the
import graph has no cycle; click is imported only under cli/. At the
package's top sit only its front (the package, ``api``, ``__main__``), which
may import any folder, and two leaves every folder may read (``_version``,
the compiled ``_kernel``), which import nothing of the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mixup_cli"

FRONT = ["", "api", "__main__"]  # "": the package itself, its public names (imported lazily from api)
# The folders, highest first: one folder, one layer.
FOLDERS = ["cli", "verify", "commands", "engines", "run", "sets", "mixing", "targets", "io", "record", "core"]
LEAVES = ["_version", "_kernel"]  # read by every layer; they import nothing of the package
MAX_TOP = 6  # modules at the package's top (``__init__`` included), the rest in folders
CLI_ONLY = {"click"}  # third-party modules only cli/ may import
# Checks never share the code they check: verify's law check and its file and
# digest checks read OUT's own arrays, none of the planner's or engines' code.
CHECKS = ["verify.laws", "verify.report"]
PLANNER = ["run.planner", "run.tasks", "run.scratch", "mixing.sampling", "mixing.mixer", "engines", "commands"]


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


def layers() -> list[str]:
    """Every layer's name, highest first."""
    return ["package", *FOLDERS, "leaves"]


def layer_of(module: str) -> int | None:
    """The rank of ``module``'s layer (0 the highest), None for a module in none:
    the folder it is in, the front, or the leaves."""
    if module in FRONT:
        return 0
    if module in LEAVES:
        return len(FOLDERS) + 1
    folder = module.split(".")[0]
    return FOLDERS.index(folder) + 1 if folder in FOLDERS else None


_HINT = " of tests/test_layering.py: put it in its layer's folder (FOLDERS)"


def _covers(names: list[str], module: str) -> bool:
    return any(module == n or module.startswith(n + ".") for n in names)


def violations(package: Path) -> list[str]:
    found, graph, mods = [], {}, modules(package)
    for mod, path in sorted(mods.items()):
        if layer_of(mod) is None:
            found.append(f"mixup_cli/{path.relative_to(package).as_posix()}: {mod!r} is in no layer{_HINT}")
    for mod, target, line in dict.fromkeys(imports(package)):
        where = f"mixup_cli/{mods[mod].relative_to(package).as_posix()}:{line}"
        if target.startswith("<"):
            if target[1:-1] in CLI_ONLY and not _covers(["cli"], mod):
                found.append(f"{where}: imports {target[1:-1]} outside cli/")
            continue
        if target == mod:
            continue
        graph.setdefault(mod, set()).add(target)
        a, b = layer_of(mod), layer_of(target)
        if a is None or b is None:
            continue  # said above
        if b < a:
            found.append(f"{where}: {mod} ({layers()[a]}) imports {target} ({layers()[b]}), a higher layer")
        elif _covers(CHECKS, mod) and _covers(PLANNER, target):
            found.append(f"{where}: {mod}, a check, imports {target}, the code it checks")
    found += [f"import cycle: {' -> '.join(c)}" for c in _cycles(graph)]
    top = sorted(p.name for p in package.iterdir() if p.suffix in (".py", ".c"))
    if len(top) > MAX_TOP:
        found.append(f"mixup_cli/ holds {len(top)} modules at its top ({', '.join(top)}): at most {MAX_TOP}")
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


def test_every_folder_is_a_layer():
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted(FOLDERS)


def request_parameters(package: Path) -> list[str]:
    """Functions below the command layer that take the command's request (a
    parameter named ``request``): what they use of it they take as plain parameters."""
    found = []
    for mod, path in sorted(modules(package).items()):
        rank = layer_of(mod)
        if path.suffix != ".py" or rank is None or rank <= layer_of("commands"):
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                if "request" in [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]:
                    found.append(
                        f"mixup_cli/{path.relative_to(package).as_posix()}:{node.lineno}: {node.name}(request)"
                    )
    return found


def test_the_request_reaches_no_module_below_the_command_layer():
    assert request_parameters(PACKAGE) == []


def test_a_request_planted_below_the_command_layer_is_caught(tmp_path):
    package = _plant(tmp_path, dict(GOOD, **{"engines/local.py": "def run(plan, *, request=None):\n    pass\n"}))
    assert request_parameters(package) == ["mixup_cli/engines/local.py:1: run(request)"]


def _plant(root: Path, files: dict[str, str]) -> Path:
    package = root / "mixup_cli"
    for rel, text in {"__init__.py": "", **files}.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return package


GOOD = {
    "_version.py": "",
    "core/__init__.py": "",
    "core/blend.py": "import numpy\nfrom mixup_cli import _version\n",
    "mixing/__init__.py": "",
    "mixing/sampling.py": "from mixup_cli.core.blend import x\n",
    "mixing/mixer.py": "from mixup_cli.mixing.sampling import Plan\n",
    "engines/__init__.py": "",
    "engines/local.py": "from mixup_cli.mixing import sampling\n",
    "commands/__init__.py": "",
    "commands/pipeline.py": "from mixup_cli.engines import local\n",
    "cli/__init__.py": "import click\nfrom . import augment\n",
    "cli/augment.py": "def run():\n    from mixup_cli.commands.pipeline import augment\n",
    "api.py": "from mixup_cli.commands import pipeline\n",
}


def test_a_planted_tree_that_keeps_the_layers_passes(tmp_path):
    assert violations(_plant(tmp_path, GOOD)) == []


@pytest.mark.parametrize(
    "module, text, expected",
    [
        # A lazy import inside a function is an edge like any other.
        (
            "engines/local.py",
            "def f():\n    from mixup_cli.commands.pipeline import augment\n",
            r"engines/local.py:3: engines.local \(engines\) imports commands.pipeline \(commands\), a higher layer",
        ),
        (
            "mixing/sampling.py",
            "from mixup_cli import engines\n",
            r"mixing.sampling \(mixing\) imports engines \(engines\)",
        ),
        ("core/blend.py", "from ..cli import augment\n", r"core.blend \(core\) imports cli.augment \(cli\)"),
        ("core/blend.py", "from mixup_cli import api\n", r"core.blend \(core\) imports api \(package\)"),
        ("_version.py", "from mixup_cli.core import blend\n", r"_version \(leaves\) imports core.blend \(core\)"),
        ("mixing/sampling.py", "import click\n", r"mixing/sampling.py:2: imports click outside cli/"),
        (
            "mixing/sampling.py",
            "from mixup_cli.mixing.mixer import Mixer\n",
            r"import cycle: mixing.(sampling|mixer) -> mixing.(sampling|mixer) -> mixing.(sampling|mixer)",
        ),
        ("shards.py", "from mixup_cli.core import blend\n", r"'shards' is in no layer"),
        ("extra/__init__.py", "from mixup_cli.core import blend\n", r"'extra' is in no layer"),
        ("verify/laws.py", "from mixup_cli.engines import local\n", r"verify.laws, a check, imports engines.local"),
        ("a.py", "", r"holds 7 modules at its top"),
    ],
)
def test_a_back_edge_planted_in_a_small_tree_is_caught(tmp_path, module, text, expected):
    import re

    files = dict(GOOD, **({"b.py": "", "c.py": "", "d.py": ""} if module == "a.py" else {}))
    files[module] = files.get(module, "") + text
    found = violations(_plant(tmp_path, files))
    assert any(re.search(expected, line) for line in found), found
