"""The README's reference of each command's options, checked against the command.

Each command's section of the README (``### `mixup NAME ...` ``) holds a
table ``| option | default | meaning |``. ``readme_problems`` compares it
with the command as it is:

- every option ``mixup NAME --help`` lists (its click parameters; ``--help``
  itself aside) is documented in that command's table;
- every option the table documents is one the command has;
- every documented default is the real one:
  - a value in backticks (`` `0.2` ``) equals the option's default, or what
    its help gives as ``[default: V]`` when the default is decided at run time;
  - ``off`` / ``on`` is a flag's default; ``required``, a required option;
  - ``as for `augment` `` says the default is augment's: augment has the
    option, with the same default;
  - words (``drawn``, ``~16 MiB of rows``) are for defaults decided at run
    time, and every quantity they name (16 MiB, 5) is one the option's
    ``[default: ...]`` help names too.

The planted mismatches below show that the check fails when the README and
a command part ways: an option removed, a default changed, an option that
does not exist, one documented under the wrong command.
"""

from __future__ import annotations

import re

import click
import pytest
from click.testing import CliRunner
from conftest import REPO

from mixup_cli.cli import cli

README = REPO / "README.md"
COMMANDS = ("augment", "verify", "inspect", "preview")
HELP_OPTIONS = {"-h", "--help"}
QUANTITY = re.compile(r"(\d+(?:\.\d+)?)\s*(KiB|MiB|GiB|B\b)?")


# ------------------------------------------------------------------ the README


def command_sections(text: str) -> dict[str, str]:
    """The text of each command's section: from its heading to the next heading
    of the same or a higher level."""
    sections = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(#{2,4}) `mixup (\w+)[ `]", line)
        if not m:
            continue
        level = len(m.group(1))
        end = next((j for j in range(i + 1, len(lines)) if re.match(rf"^#{{1,{level}}} ", lines[j])), len(lines))
        sections[m.group(2)] = "\n".join(lines[i + 1 : end])
    return sections


def _cells(line: str) -> list[str]:
    # Split a table row on the bars that are not escaped (`2\|3`).
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]


def option_table(section: str) -> list[tuple[list[str], str, str]]:
    """Rows of the section's ``| option | default | ... |`` table: (options, default, meaning)."""
    lines = section.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|") and _cells(line)[:2] == ["option", "default"]:
            rows = []
            for row in lines[i + 2 :]:
                if not row.startswith("|"):
                    break
                cells = _cells(row)
                options = [code.split()[0] for code in re.findall(r"`([^`]+)`", cells[0]) if code.startswith("-")]
                rows.append((options, cells[1], cells[2] if len(cells) > 2 else ""))
            return rows
    return []


# ----------------------------------------------------------------- the command


def help_options(name: str) -> set[str]:
    """The options ``mixup NAME --help`` lists, as it prints them."""
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    text = result.output.split("\nOptions:\n", 1)[1]
    found = set()
    for line in text.splitlines():
        m = re.match(r"^  (-\S.*?)(?:\s{2,}|$)", line)
        if m:
            for part in re.split(r",\s*|\s+/\s+", m.group(1)):
                found.add(part.split()[0])
    return found - HELP_OPTIONS


def command_options(command: click.Command) -> dict[str, click.Option]:
    return {opt: p for p in command.params if isinstance(p, click.Option) for opt in (*p.opts, *p.secondary_opts)}


def _help_default(param: click.Option) -> str | None:
    """What the help says the default is, when it is decided at run time."""
    m = re.search(r"\[default: ([^\]]+)\]", param.help or "")
    return m.group(1) if m else None


def _same_value(documented: str, real) -> bool:
    try:
        return float(documented) == float(real)
    except (TypeError, ValueError):
        return documented == str(real)


def _quantities(text: str) -> set[str]:
    return {f"{n} {unit}".strip() for n, unit in QUANTITY.findall(text or "")}


def default_problem(param: click.Option, documented: str, commands) -> str | None:
    """Why ``documented`` is not ``param``'s default, or None when it is."""
    text = documented.strip()
    code = re.fullmatch(r"`([^`]*)`", text)
    if text == "as for `augment`":
        other = command_options(commands["augment"]).get(param.opts[0])
        if other is None:
            return "documented as augment's, but augment has no such option"
        if (other.default, other.is_flag) != (param.default, param.is_flag):
            return f"documented as augment's, but augment's default is {other.default!r}, this one {param.default!r}"
        return None
    if param.required:
        return None if text == "required" else f"the option is required, documented default {text!r}"
    if param.is_flag and not param.secondary_opts:
        expected = "on" if param.default else "off"
        return None if text == expected else f"a flag {expected} by default, documented default {text!r}"
    if param.default is not None:
        if code and _same_value(code.group(1), param.default):
            return None
        return f"default is {param.default!r}, documented default {text!r}"
    stated = _help_default(param)
    if code:
        if stated is not None and _same_value(code.group(1), stated):
            return None
        return f"no fixed default ({stated or 'decided at run time'}), documented default {text!r}"
    if _quantities(text) != _quantities(stated):
        return f"default is {stated!r} (--help), documented default {text!r}"
    return None


def readme_problems(text: str, commands=None) -> list[str]:
    """Every way the README's option tables differ from the commands."""
    commands = commands or cli.commands
    sections = command_sections(text)
    problems = []
    for name in COMMANDS:
        command = commands[name]
        options = command_options(command)
        if name not in sections:
            problems.append(f"mixup {name}: no section in the README")
            continue
        table = option_table(sections[name])
        if not table:
            problems.append(f"mixup {name}: its section has no | option | default | meaning | table")
            continue
        documented = set()
        for names, default, _ in table:
            for opt in names:
                documented.add(opt)
                param = options.get(opt)
                if param is None:
                    problems.append(f"mixup {name} {opt}: documented, but the command has no such option")
                    continue
                why = default_problem(param, default, commands)
                if why:
                    problems.append(f"mixup {name} {opt}: {why}")
        for opt in sorted(set(options) - documented):
            problems.append(f"mixup {name} {opt}: in --help, not in the command's README table")
    return problems


# ----------------------------------------------------------------------- tests


@pytest.fixture(scope="module")
def readme():
    return README.read_text()


def test_the_readme_documents_every_option_of_every_command_with_its_default(readme):
    assert readme_problems(readme) == []


@pytest.mark.parametrize("name", COMMANDS)
def test_the_checked_options_are_those_help_lists(name):
    assert set(command_options(cli.commands[name])) - HELP_OPTIONS == help_options(name)


@pytest.mark.parametrize("name", COMMANDS)
def test_every_section_has_a_table_that_is_read(readme, name):
    table = option_table(command_sections(readme)[name])
    assert sum(len(names) for names, _, _ in table) >= 2


def _row(readme: str, section: str, option: str) -> str:
    body = command_sections(readme)[section]
    (line,) = [
        line
        for line in body.splitlines()
        if line.startswith("|") and option in [o.split()[0] for o in re.findall(r"`(-[^`]+)`", _cells(line)[0])]
    ]
    return line


def _planted(readme: str, section: str, old: str, new: str) -> str:
    body = command_sections(readme)[section]
    assert old in body
    return readme.replace(body, body.replace(old, new, 1), 1)


def test_a_removed_option_is_found(readme):
    line = _row(readme, "augment", "--copies")
    problems = readme_problems(_planted(readme, "augment", line + "\n", ""))
    assert problems == ["mixup augment --copies: in --help, not in the command's README table"]


def test_a_changed_default_is_found(readme):
    line = _row(readme, "augment", "--alpha")
    problems = readme_problems(_planted(readme, "augment", line, line.replace("| `0.2` |", "| `0.3` |")))
    assert problems == ["mixup augment --alpha: default is 0.2, documented default '`0.3`'"]


def test_the_verify_batch_size_of_4_mib_is_found(readme):
    line = _row(readme, "verify", "--batch-size")
    wrong = re.sub(r"\| [^|]*16 MiB[^|]* \|", "| about 4 MiB |", line, count=1)
    assert wrong != line
    (problem,) = readme_problems(_planted(readme, "verify", line, wrong))
    assert problem.startswith("mixup verify --batch-size: default is 'about 16 MiB") and "4 MiB" in problem


def test_a_flag_documented_as_on_is_found(readme):
    line = _row(readme, "inspect", "--json")
    (problem,) = readme_problems(_planted(readme, "inspect", line, line.replace("| off |", "| on |")))
    assert problem == "mixup inspect --json: a flag off by default, documented default 'on'"


def test_an_option_the_command_lacks_is_found(readme):
    line = _row(readme, "verify", "--input")
    extra = line + "\n| `--frobnicate N` | `3` | not an option |"
    problems = readme_problems(_planted(readme, "verify", line, extra))
    assert problems == ["mixup verify --frobnicate: documented, but the command has no such option"]


def test_an_option_documented_under_another_command_is_found(readme):
    line = _row(readme, "augment", "--copies")
    moved = _planted(readme, "augment", line + "\n", "")
    preview_line = _row(moved, "preview", "--rows")
    moved = _planted(moved, "preview", preview_line, preview_line + "\n" + line)
    assert sorted(readme_problems(moved)) == [
        "mixup augment --copies: in --help, not in the command's README table",
        "mixup preview --copies: documented, but the command has no such option",
    ]


def test_as_for_augment_needs_augment_to_have_it_with_that_default(readme):
    line = _row(readme, "preview", "--rows")
    problems = readme_problems(_planted(readme, "preview", line, line.replace("| `4` |", "| as for `augment` |")))
    assert problems == ["mixup preview --rows: documented as augment's, but augment has no such option"]


def test_a_changed_command_default_is_found(readme, monkeypatch):
    """The other way round: the README stays, the command's default moves."""
    alpha = command_options(cli.commands["augment"])["--alpha"]
    monkeypatch.setattr(alpha, "default", 0.5)
    problems = readme_problems(readme)
    assert sorted(problems) == [
        "mixup augment --alpha: default is 0.5, documented default '`0.2`'",
        "mixup preview --alpha: documented as augment's, but augment's default is 0.5, this one 0.2",
    ]


def test_the_help_defaults_in_mib_are_what_a_run_uses(run_cli, tmp_path):
    """The sizes the help (and so the README) gives for --batch-size and
    --block-rows are the ones a run picks: with rows of 1 MiB, 16 MiB is 16 rows."""
    import json

    import numpy as np
    from conftest import write_h5

    for name in ("augment", "verify"):
        stated = _help_default(command_options(cli.commands[name])["--batch-size"])
        assert _quantities(stated) == {"16 MiB"}, name
    assert _quantities(_help_default(command_options(cli.commands["augment"])["--block-rows"])) == {"16 MiB"}
    x = np.zeros((17, 1 << 18), np.float32)  # 1 MiB a row
    src = write_h5(tmp_path / "wide.h5", chunks=False, x=x)
    out = tmp_path / "out.h5"
    result = run_cli("augment", src, out, "--no-y", "--seed", 1, "--quiet")
    assert result.exit_code == 0, result.stderr
    record = json.loads((tmp_path / "out.h5.provenance.json").read_text())
    assert record["parameters"]["block_rows"] == 16
    assert record["execution"]["batch_size"] == 16
