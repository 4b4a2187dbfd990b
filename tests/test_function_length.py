"""No library function longer than MAX_LINES statements (nested functions counted
in their parent), except the few listed with their length, which may only shrink.

A function's length is the number of lines on which one of its statements
starts: a call the formatter spreads over several lines counts once, so the
measure does not change with the formatting."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mixup_cli"
MAX_LINES = 45
# module path, function: its length today, for a function that reads best whole.
ALLOWED: dict[tuple[str, str], int] = {}


def long_functions(package: Path) -> dict[tuple[str, str], int]:
    found = {}
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = len({s.lineno for s in ast.walk(node) if isinstance(s, ast.stmt)})
                if lines > MAX_LINES:
                    found[(rel, node.name)] = max(lines, found.get((rel, node.name), 0))
    return found


def test_library_functions_stay_short():
    found = long_functions(PACKAGE)
    over = {k: n for k, n in found.items() if n > ALLOWED.get(k, MAX_LINES)}
    assert over == {}, f"longer than {MAX_LINES} lines (or than allowed): {over}"


def test_the_check_sees_a_long_function(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(f"def long():\n{body}\ndef short():\n    pass\n")
    assert long_functions(tmp_path) == {("m.py", "long"): MAX_LINES + 1}
