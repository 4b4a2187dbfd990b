"""The command reference in docs/reference, generated from the commands.

``python -m mixup_cli.cli.reference docs/reference`` writes one page per
command (its usage, description, examples and a table of its options with
their defaults and help, as ``--help`` states them) and ``index.md``. The
committed pages must be what the commands give now; the planted changes
below (an option added, removed, a default or a help changed, on small
commands built here and on a copy of ``augment``) show that a difference is
caught and named. Only click's public API is used, here as in the renderer.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import click
import numpy as np
import pytest
from conftest import REPO, write_h5

from mixup_cli.cli import cli, reference

REFERENCE = REPO / "docs" / "reference"
REGENERATE = "python -m mixup_cli.cli.reference docs/reference"
QUANTITY = re.compile(r"\d+(?:\.\d+)?\s*(?:KiB|MiB|GiB)")


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    return reference.render()


def _commands() -> dict[str, tuple[click.Command, click.Context]]:
    root = click.Context(cli, info_name="mixup", **cli.context_settings)
    return {
        name: (cli.get_command(root, name), click.Context(cli.get_command(root, name), info_name=name, parent=root))
        for name in cli.list_commands(root)
    }


def table(page: str) -> dict[str, tuple[str, str]]:
    """The options table of a page: each option name -> (default, meaning)."""
    rows = {}
    for line in page.split("\n## Options\n", 1)[1].splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        if not line.startswith("| `"):
            continue
        for code in re.findall(r"`([^`]+)`", cells[0]):
            rows[code.split()[0]] = (cells[1], cells[2])
    return rows


def changed_lines(old: str, new: str) -> tuple[list[str], list[str]]:
    """Lines only in ``old``, lines only in ``new``."""
    a, b = old.splitlines(), new.splitlines()
    return [line for line in a if line not in b], [line for line in b if line not in a]


# ------------------------------------------------------- the committed pages


def test_the_committed_pages_are_what_the_commands_give(pages, tmp_path):
    reference.write(tmp_path, pages)
    fresh = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in REFERENCE.glob("*.md"))
    assert committed == fresh, f"docs/reference has other pages than the commands give; regenerate with: {REGENERATE}"
    for name in fresh:
        assert (REFERENCE / name).read_text() == (tmp_path / name).read_text(), (
            f"docs/reference/{name} is out of date; regenerate with: {REGENERATE}"
        )
    assert reference.stale(REFERENCE, pages) == []


def test_there_is_a_page_for_every_command_and_the_index_lists_each(pages):
    names = set(_commands())
    assert {"augment", "verify", "inspect", "preview"} <= names
    assert set(pages) == {"index.md"} | {f"{name}.md" for name in names}
    index = pages["index.md"]
    for name in names:
        (line,) = [line for line in index.splitlines() if line.startswith(f"- [`mixup {name}`]({name}.md): ")]
        assert len(line) > len(f"- [`mixup {name}`]({name}.md): ") + 10


@pytest.mark.parametrize("name", ["augment", "verify", "inspect", "preview"])
def test_every_option_of_the_command_is_on_its_page_and_nothing_else(pages, name):
    command, ctx = _commands()[name]
    options = {
        opt
        for p in command.get_params(ctx)
        if isinstance(p, click.Option) and p.get_help_record(ctx) is not None
        for opt in (*p.opts, *p.secondary_opts)
    }
    page = pages[f"{name}.md"]
    assert set(table(page)) == options
    assert f"# `mixup {name}`" in page
    usage = re.search(r"```text\n(mixup .*)\n```", page).group(1)
    assert usage.startswith(f"mixup {name} [OPTIONS]")


def test_a_page_has_the_summary_examples_and_every_help_and_default(pages):
    page = pages["augment.md"]
    assert "Write a mixed copy of dataset IN to OUT, plus OUT.provenance.json." in page
    examples = page.split("## Examples\n\n```bash\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert examples[0] == "mixup augment in.h5 out.h5 --alpha 0.2 --seed 7"
    assert all(line.startswith("mixup augment ") for line in examples)
    rows = table(page)
    assert rows["--alpha"][0] == "`0.2`"  # click's [default: 0.2]
    assert rows["--seed"][0] == "drawn"  # the help's own [default: drawn]
    assert rows["--neighbors"][0] == "`5`"
    assert rows["--no-y"][0] == "off"
    assert rows["--byte-shuffle"] == rows["--no-byte-shuffle"]
    assert rows["--byte-shuffle"][0] == "on for gzip"
    assert "[x>=1]" in rows["--chunk-rows"][1]
    assert "exp(-\\|y_i - y_j\\|^2" in rows["--bandwidth"][1]  # the bar escaped in the table
    assert table(pages["preview.md"])["--output"][0] == "required"


def test_the_pages_do_not_depend_on_the_terminal(pages, monkeypatch):
    for columns in ("20", "400"):
        monkeypatch.setenv("COLUMNS", columns)
        assert reference.render() == pages


# ----------------------------------------------------------- planted changes


def small_group(*options: click.Option, flag_default: bool | None = None) -> click.Group:
    """A group with one command ``run`` taking ``options`` (and a flag)."""
    flag = (
        click.Option(["--flag"], is_flag=True, help="A flag.")
        if flag_default is None
        else click.Option(["--flag"], is_flag=True, default=flag_default, help="A flag.")
    )
    run = click.Command(
        "run",
        params=[click.Argument(["path"], metavar="IN"), *options, flag],
        help="Run it.\n\nMore words.\n\n\b\nExamples:\n  tool run a.h5\n",
    )
    return click.Group("tool", commands={"run": run}, help="A tool.")


ALPHA = click.Option(["--alpha"], type=float, default=0.2, show_default=True, help="lam ~ Beta(alpha, alpha).")
SIZE = click.Option(["--size"], type=int, default=None, help="Rows at once [default: about 16 MiB].")


def _render_small(*options, **kwargs) -> dict[str, str]:
    return reference.render(small_group(*options, **kwargs), "tool")


def _planted(tmp_path, base: dict[str, str], planted: dict[str, str]) -> tuple[list[str], list[str]]:
    """What ``stale`` says of the pages ``base`` against ``planted``, and the lines that differ."""
    reference.write(tmp_path, base)
    problems = reference.stale(tmp_path, planted)
    return problems, changed_lines(base["run.md"], planted["run.md"])


def test_the_small_command_renders_as_expected():
    page = _render_small(ALPHA, SIZE)["run.md"]
    assert "\n```text\ntool run [OPTIONS] IN\n```\n" in page
    assert "## Examples\n\n```bash\ntool run a.h5\n```" in page
    assert "| `--alpha FLOAT` | `0.2` | lam ~ Beta(alpha, alpha). |" in page
    assert "| `--size INTEGER` | about 16 MiB | Rows at once. |" in page
    assert "| `--flag` | off | A flag. |" in page


def test_an_option_added_is_found(tmp_path):
    extra = click.Option(["--copies"], type=int, default=1, show_default=True, help="Copies.")
    problems, (gone, new) = _planted(tmp_path, _render_small(ALPHA, SIZE), _render_small(ALPHA, SIZE, extra))
    assert problems == [f"{tmp_path / 'run.md'}: stale"]
    assert (gone, new) == ([], ["| `--copies INTEGER` | `1` | Copies. |"])


def test_an_option_removed_is_found(tmp_path):
    problems, (gone, new) = _planted(tmp_path, _render_small(ALPHA, SIZE), _render_small(ALPHA))
    assert problems == [f"{tmp_path / 'run.md'}: stale"]
    assert (gone, new) == (["| `--size INTEGER` | about 16 MiB | Rows at once. |"], [])


@pytest.mark.parametrize(
    "option, old, new",
    [
        (
            click.Option(["--alpha"], type=float, default=0.3, show_default=True, help="lam ~ Beta(alpha, alpha)."),
            "| `--alpha FLOAT` | `0.2` | lam ~ Beta(alpha, alpha). |",
            "| `--alpha FLOAT` | `0.3` | lam ~ Beta(alpha, alpha). |",
        ),
        (
            click.Option(["--size"], type=int, default=None, help="Rows at once [default: about 4 MiB]."),
            "| `--size INTEGER` | about 16 MiB | Rows at once. |",
            "| `--size INTEGER` | about 4 MiB | Rows at once. |",
        ),
    ],
    ids=["stated-by-click", "stated-in-the-help"],
)
def test_a_changed_default_is_found(tmp_path, option, old, new):
    others = [o for o in (ALPHA, SIZE) if o.name != option.name]
    problems, changed = _planted(tmp_path, _render_small(ALPHA, SIZE), _render_small(*others, option))
    assert problems == [f"{tmp_path / 'run.md'}: stale"]
    assert changed == ([old], [new])


def test_a_flag_on_by_default_is_found(tmp_path):
    problems, changed = _planted(tmp_path, _render_small(ALPHA), _render_small(ALPHA, flag_default=True))
    assert problems == [f"{tmp_path / 'run.md'}: stale"]
    assert changed == (["| `--flag` | off | A flag. |"], ["| `--flag` | on | A flag. |"])


def test_a_changed_help_is_found(tmp_path):
    alpha = click.Option(["--alpha"], type=float, default=0.2, show_default=True, help="lam ~ Beta(alpha, 2 alpha).")
    problems, changed = _planted(tmp_path, _render_small(ALPHA, SIZE), _render_small(alpha, SIZE))
    assert problems == [f"{tmp_path / 'run.md'}: stale"]
    assert changed == (
        ["| `--alpha FLOAT` | `0.2` | lam ~ Beta(alpha, alpha). |"],
        ["| `--alpha FLOAT` | `0.2` | lam ~ Beta(alpha, 2 alpha). |"],
    )


def _mixup_with(augment: click.Command) -> click.Group:
    """The real group with ``augment`` replaced."""
    root = click.Context(cli, info_name="mixup", **cli.context_settings)
    found = {name: cli.get_command(root, name) for name in cli.list_commands(root)}
    found["augment"] = augment
    return click.Group(
        "mixup", commands=found, params=list(cli.params), help=cli.help, context_settings=cli.context_settings
    )


def test_a_changed_copy_of_augment_makes_its_committed_page_stale(pages):
    """On the real page: --copies removed, then given another default."""
    augment = _commands()["augment"][0]
    kept = [p for p in augment.params if "--copies" not in getattr(p, "opts", ())]
    assert len(kept) == len(augment.params) - 1
    row = next(line for line in pages["augment.md"].splitlines() if line.startswith("| `--copies INTEGER` | `1` |"))

    without = click.Command("augment", params=kept, help=augment.help)
    rendered = reference.render(_mixup_with(without))
    assert reference.stale(REFERENCE, rendered) == [f"{REFERENCE / 'augment.md'}: stale"]
    assert changed_lines(pages["augment.md"], rendered["augment.md"]) == ([row], [])

    copies = click.Option(
        ["--copies"],
        type=int,
        default=2,
        show_default=True,
        help="Augmented copies of the dataset to write, each with fresh lam and partners.",
    )
    at = [p.name for p in augment.params].index("copies")
    moved = click.Command("augment", params=[*kept[:at], copies, *kept[at:]], help=augment.help)
    rendered = reference.render(_mixup_with(moved))
    assert reference.stale(REFERENCE, rendered) == [f"{REFERENCE / 'augment.md'}: stale"]
    assert changed_lines(pages["augment.md"], rendered["augment.md"]) == ([row], [row.replace("`1`", "`2`")])


# -------------------------------------------------------- the module's command


def _reference_command(*args):
    return subprocess.run(
        [sys.executable, "-m", "mixup_cli.cli.reference", *map(str, args)], capture_output=True, text=True, cwd=REPO
    )


def test_check_exits_1_naming_each_stale_page_and_the_command_that_fixes_it(tmp_path):
    folder = tmp_path / "reference"
    shutil.copytree(REFERENCE, folder)
    assert _reference_command(folder, "--check").returncode == 0
    (folder / "verify.md").write_text((folder / "verify.md").read_text().replace("OK", "KO"))
    (folder / "inspect.md").unlink()
    (folder / "gone.md").write_text(reference.MARKER + "\n\n# `mixup gone`\n")
    (folder / "notes.md").write_text("# not generated: left alone\n")
    result = _reference_command(folder, "--check")
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    fix = f"; regenerate with: python -m mixup_cli.cli.reference {folder}"
    assert sorted(lines) == sorted(
        [
            f"{folder / 'inspect.md'}: missing{fix}",
            f"{folder / 'verify.md'}: stale{fix}",
            f"{folder / 'gone.md'}: of no command now{fix}",
        ]
    )
    assert _reference_command(folder).returncode == 0
    assert _reference_command(folder, "--check").returncode == 0
    assert sorted(p.name for p in folder.iterdir()) == sorted([*(p.name for p in REFERENCE.iterdir()), "notes.md"])


# ------------------------------------------------ the defaults a run decides


def test_the_pages_sizes_in_mib_are_what_a_run_uses(pages, run_cli, tmp_path):
    """The sizes the pages give for --batch-size and --block-rows are the
    ones a run picks: with rows of 1 MiB, 16 MiB is 16 rows."""
    for name, option in (("augment", "--batch-size"), ("verify", "--batch-size"), ("augment", "--block-rows")):
        default = table(pages[f"{name}.md"])[option][0]
        assert QUANTITY.findall(default) == ["16 MiB"], (name, option, default)
    x = np.zeros((17, 1 << 18), np.float32)  # 1 MiB a row
    src = write_h5(tmp_path / "wide.h5", chunks=False, x=x)
    out = tmp_path / "out.h5"
    result = run_cli("augment", src, out, "--no-y", "--seed", 1, "--quiet")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out.h5.provenance.json").read_text())
    assert record["parameters"]["block_rows"] == 16
    assert record["execution"]["batch_size"] == 16
