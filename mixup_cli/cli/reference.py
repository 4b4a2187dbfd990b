"""The command reference: one Markdown page per command, written from the commands.

``python -m mixup_cli.cli.reference docs/reference`` writes ``index.md`` and
``NAME.md`` for every command of the ``mixup`` group; ``--check`` writes
nothing, and exits 1 naming each page that differs from what the commands
give (missing, stale, or of a command that is gone).

A page holds the command's summary, usage, description, examples and a table
of its options, each with its default and its help as ``--help`` states them.
Only click's public API is read (``Context``, ``Command.get_usage``,
``Command.help``, ``Parameter.get_help_record``, ``Option.opts``,
``Option.is_flag``, ``Parameter.get_default``), and the text is laid out here,
not by click's formatter: the pages are the same on every click version we
support, at any terminal width, in any environment.
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import click

REGENERATE = "python -m mixup_cli.cli.reference docs/reference"
MARKER = f"<!-- Generated from the commands' help by `{REGENERATE}`: edit the help, not this page. -->"
INDEX = "index.md"
_WIDE = 10_000  # no wrapping by click: lines are laid out here

# What Markdown would read as markup in help text: the table's bar, emphasis
# (an underscore inside a word is none), a tag, strikethrough, code spans.
_MARKUP = re.compile(r"[\\`*|]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|<(?=[A-Za-z/!?])|~(?=\S)")
_MARKUP_PROSE = re.compile(r"[\\*|]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|<(?=[A-Za-z/!?])|~(?=\S)")  # keeps `code`
_LITERAL = re.compile(r"[\w.,+/-]*\d[\w.,+/-]*")  # a stated default that is a value (5), not words
_DEFAULT_IN_HELP = re.compile(r"\s*\[default: ([^\]]+)\]")


# ---------------------------------------------------------------- contexts


def _root_context(group: click.Group, name: str) -> click.Context:
    return click.Context(group, info_name=name, terminal_width=_WIDE, max_content_width=_WIDE, **group.context_settings)


def _context(command: click.Command, name: str, parent: click.Context) -> click.Context:
    return click.Context(
        command,
        info_name=name,
        parent=parent,
        terminal_width=_WIDE,
        max_content_width=_WIDE,
        **command.context_settings,
    )


def commands(group: click.Group, parent: click.Context) -> dict[str, click.Command]:
    """The group's commands by name, sorted, hidden ones left out."""
    found = {}
    for name in group.list_commands(parent):
        command = group.get_command(parent, name)
        if command is not None and not command.hidden:
            found[name] = command
    return found


# -------------------------------------------------------------------- text


def _escape(text: str, keep_code: bool = False) -> str:
    return (_MARKUP_PROSE if keep_code else _MARKUP).sub(lambda m: "\\" + m.group(0), text)


@dataclass
class Help:
    """A command's help text in parts: summary, description paragraphs and
    verbatim blocks (``\\b`` in the docstring; an indented block under a line
    ending in ':' is a section such as Examples)."""

    summary: str
    parts: list[tuple[str, str | None, list[str]]]  # (kind, title, lines): "text" or "block"


def split_help(text: str | None) -> Help:
    text = inspect.cleandoc(text or "").partition("\f")[0]
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    parts: list[tuple[str, str | None, list[str]]] = []
    for paragraph in paragraphs:
        lines = paragraph.splitlines()
        if lines[0].strip() == "\b":
            lines = lines[1:]
            title = None
            if lines and lines[0].rstrip().endswith(":") and not lines[0].startswith(" "):
                title, lines = lines[0].rstrip()[:-1], lines[1:]
            parts.append(("block", title, _dedent(lines)))
        else:
            parts.append(("text", None, [" ".join(line.strip() for line in lines)]))
    summary = parts.pop(0)[2][0] if parts and parts[0][0] == "text" else ""
    return Help(summary, parts)


def _dedent(lines: list[str]) -> list[str]:
    indents = [len(line) - len(line.lstrip()) for line in lines if line.strip()]
    cut = min(indents, default=0)
    return [line[cut:].rstrip() for line in lines]


# ----------------------------------------------------------------- options


@dataclass(frozen=True)
class OptionRow:
    names: str  # as --help shows them, with the metavar: "-o, --output PATH"
    default: str  # Markdown
    meaning: str  # Markdown


def _click_extra(help_text: str) -> tuple[str, list[str]]:
    """The help as written, and the items click appends as ``  [a; b]``."""
    m = re.search(r"  \[([^\[\]]*)\]$", help_text)
    if not m:
        return help_text, []
    return help_text[: m.start()], [item.strip() for item in m.group(1).split(";")]


def option_row(param: click.Option, ctx: click.Context, help_opts: set[str]) -> OptionRow | None:
    record = param.get_help_record(ctx)
    if record is None:  # a hidden option
        return None
    names, help_text = record
    text, extra = _click_extra(help_text)
    default = ""
    shown = [item for item in extra if item.startswith("default: ")]
    extra = [item for item in extra if not item.startswith("default: ") and item != "required"]
    stated = _DEFAULT_IN_HELP.search(text)
    if shown:
        default = f"`{_escape_code(shown[0][len('default: ') :])}`"
    elif stated:
        value = stated.group(1)
        default = f"`{value}`" if _LITERAL.fullmatch(value) else _escape(value)
        text = (text[: stated.start()] + text[stated.end() :]).strip()
    elif param.required:
        default = "required"
    elif set(param.opts) & help_opts or param.name == "version":
        default = ""  # they print and exit
    else:
        default = _default_value(param.get_default(ctx))
    meaning = _escape(text.strip())
    if extra:
        meaning += " " + _escape(f"[{'; '.join(extra)}]")
    return OptionRow(names, default, meaning)


def _default_value(value) -> str:
    """A default --help does not state: on/off for a flag (of either form), a
    plain value as code, none for anything else (None; no default at all)."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (str, int, float)):
        return f"`{_escape_code(str(value))}`"
    return "none"


def option_rows(command: click.Command, ctx: click.Context) -> list[OptionRow]:
    help_opts = set(ctx.help_option_names)
    rows = []
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            row = option_row(param, ctx, help_opts)
            if row is not None:
                rows.append(row)
    return rows


def _names_cell(names: str) -> str:
    # "-o, --output PATH" -> `-o`, `--output PATH`; "--a / --no-a" -> `--a` / `--no-a`
    alternatives = [", ".join(f"`{_escape_code(n)}`" for n in alt.split(", ")) for alt in names.split(" / ")]
    return " / ".join(alternatives)


def _escape_code(text: str) -> str:
    return text.replace("|", "\\|")


def option_table(rows: list[OptionRow]) -> list[str]:
    lines = ["| option | default | meaning |", "| --- | --- | --- |"]
    lines += [f"| {_names_cell(r.names)} | {r.default} | {r.meaning} |" for r in rows]
    return lines


# ------------------------------------------------------------------- pages


def _usage(command: click.Command, ctx: click.Context) -> str:
    usage = command.get_usage(ctx).strip()
    return re.sub(r"^Usage:\s*", "", usage)


def command_page(command: click.Command, ctx: click.Context) -> str:
    path = ctx.command_path
    help_ = split_help(command.help)
    lines = [MARKER, "", f"# `{path}`", ""]
    if help_.summary:
        lines += [_escape(help_.summary, keep_code=True), ""]
    lines += ["```text", _usage(command, ctx), "```", ""]
    for kind, title, body in help_.parts:
        if kind == "text":
            lines += [_escape(body[0], keep_code=True), ""]
            continue
        if title:
            lines += [f"## {title}", ""]
        # Examples are shell lines, run as written by tests/test_docs_examples.py.
        fence = "```bash" if title == "Examples" else "```text"
        lines += [fence, *body, "```", ""]
    lines += ["## Options", "", *option_table(option_rows(command, ctx)), ""]
    return "\n".join(lines)


def index_page(group: click.Group, ctx: click.Context, found: dict[str, click.Command]) -> str:
    help_ = split_help(group.help)
    lines = [MARKER, "", f"# `{ctx.command_path}` command reference", ""]
    if help_.summary:
        lines += [_escape(help_.summary, keep_code=True), ""]
    for name, command in found.items():
        summary = split_help(command.help).summary
        lines.append(f"- [`{ctx.command_path} {name}`]({name}.md): {_escape(summary, keep_code=True)}")
    lines += ["", f"Options of `{ctx.command_path}` itself:", "", *option_table(option_rows(group, ctx)), ""]
    return "\n".join(lines)


def render(group: click.Group | None = None, name: str = "mixup") -> dict[str, str]:
    """Every page, by file name: ``index.md`` and ``NAME.md`` per command."""
    if group is None:
        from mixup_cli.cli import cli as group
    root = _root_context(group, name)
    found = commands(group, root)
    pages = {INDEX: index_page(group, root, found)}
    for sub, command in found.items():
        pages[f"{sub}.md"] = command_page(command, _context(command, sub, root))
    return pages


# ------------------------------------------------------------ write, check


def _generated(folder: Path) -> set[str]:
    """Pages in ``folder`` this module wrote (they start with the marker)."""
    found = set()
    for path in folder.glob("*.md"):
        with open(path, encoding="utf-8") as f:
            if f.readline().rstrip("\n") == MARKER:
                found.add(path.name)
    return found


def stale(folder: Path, pages: dict[str, str]) -> list[str]:
    """Why each page in ``folder`` differs from ``pages``, one line each."""
    folder = Path(folder)
    problems = []
    for name, text in pages.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing")
        elif path.read_text(encoding="utf-8") != text:
            problems.append(f"{path}: stale")
    if folder.is_dir():
        for name in sorted(_generated(folder) - set(pages)):
            problems.append(f"{folder / name}: of no command now")
    return problems


def write(folder: Path, pages: dict[str, str]) -> list[Path]:
    """Write ``pages`` into ``folder`` (pages of commands that are gone removed); the paths changed."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    changed = []
    for name in sorted(_generated(folder) - set(pages)):
        (folder / name).unlink()
        changed.append(folder / name)
    for name, text in pages.items():
        path = folder / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mixup_cli.cli.reference", description="Write the command reference pages."
    )
    parser.add_argument("folder", type=Path, help="where the pages go (docs/reference)")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each page out of date")
    args = parser.parse_args(argv)
    pages = render()
    if args.check:
        problems = stale(args.folder, pages)
        for line in problems:
            print(f"{line}; regenerate with: python -m mixup_cli.cli.reference {args.folder}", file=sys.stderr)
        return 1 if problems else 0
    for path in write(args.folder, pages):
        print(f"wrote {path}" if path.exists() else f"removed {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
