"""Brace patterns as WebDataset (and the ``braceexpand`` package) write
lists of shards: ``shard-{000..099}.tar``, ``{train,val}-{0..3}.tar``.

Quoted by the user, the shell leaves them alone; mixup expands them itself
(``augment``: a set of the paths named; ``preview``: the shards read as one
input). Standard library only.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mixup_cli.core.errors import InputError, ParameterError

MAX_PATTERN_PATHS = 1_000_000
_RANGE = re.compile(r"^(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?$|^([A-Za-z])\.\.([A-Za-z])(?:\.\.(-?\d+))?$")


def is_pattern(path: str | Path) -> bool:
    """Whether ``path`` is a brace pattern (``shard-{000..099}.tar``,
    ``{train,val}.tar``) rather than a path that exists under that name."""
    text = str(path)
    return _first_group(text) is not None and not os.path.lexists(text)


def expand_pattern(path: str | Path) -> list[Path]:
    """The paths a brace pattern names, in order (a path that exists, or holds
    no pattern, is itself). A name the pattern gives that does not exist is
    refused in one line naming the first one missing."""
    text = str(path)
    if _first_group(text) is None or os.path.lexists(text):
        return [Path(path)]
    names = braces(text)
    missing = [name for name in names if not os.path.lexists(name)]
    if missing:
        raise InputError(
            f"{text}: {missing[0]} does not exist ({len(missing)} of the {len(names)} paths the pattern names "
            "are missing); check the pattern, or list the shards that exist with --inputs-from"
        )
    return [Path(name) for name in names]


def braces(text: str, limit: int = MAX_PATTERN_PATHS) -> list[str]:
    """Brace expansion as the ``braceexpand`` package (and WebDataset) do it:
    ``{a,b}`` alternatives, ``{000..099}`` numeric ranges (zero-padded to the
    wider bound when either bound is), ``{a..e}`` letter ranges, an optional
    step ``{0..10..2}``, nested groups; ``\\{`` is a literal brace. A group
    that is none of these stays as written. At most ``limit`` names."""
    return [_unescape(name) for name in _expand(text, limit)]


def _unescape(text: str) -> str:
    return text.replace("\\{", "{").replace("\\}", "}").replace("\\,", ",")


def _expand(text: str, limit: int) -> list[str]:
    group = _first_group(text)
    if group is None:
        return [text]
    start, end, choices = group
    found: list[str] = []
    for choice in choices:
        for tail in _expand(choice + text[end + 1 :], limit):
            found.append(text[:start] + tail)
            if len(found) > limit:
                raise ParameterError(
                    f"{text[:200]}: the pattern names more than {limit} paths; list the inputs with --inputs-from",
                    "IN",
                )
    return found


def _first_group(text: str):
    """(start, end, choices) of the first expandable ``{...}`` group, or None."""
    at = 0
    while True:
        start = _unescaped(text, "{", at)
        if start < 0:
            return None
        depth, i, commas = 0, start, []
        end = -1
        while i < len(text):
            c = text[i]
            if c == "\\":
                i += 2
                continue
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    end = i
                    break
            elif c == "," and depth == 1:
                commas.append(i)
            i += 1
        if end < 0:
            return None
        inner = text[start + 1 : end]
        if commas:
            cuts = [start] + commas + [end]
            return start, end, [text[a + 1 : b] for a, b in zip(cuts, cuts[1:])]
        choices = _range(inner)
        if choices is not None:
            return start, end, choices
        at = start + 1  # not a pattern: kept as written


def _unescaped(text: str, char: str, at: int) -> int:
    while True:
        i = text.find(char, at)
        if i <= 0 or text[i - 1] != "\\":
            return i
        at = i + 1


def _range(inner: str) -> list[str] | None:
    match = _RANGE.match(inner)
    if match is None:
        return None
    if match.group(1) is not None:
        a, b, step = match.group(1), match.group(2), abs(int(match.group(3) or 1)) or 1
        lo, hi = int(a), int(b)
        padded = any(len(s.lstrip("-")) > 1 and s.lstrip("-").startswith("0") for s in (a, b))
        width = max(len(a), len(b)) if padded else 0
        values = range(lo, hi + 1, step) if lo <= hi else range(lo, hi - 1, -step)
        if len(values) > MAX_PATTERN_PATHS:
            raise ParameterError(
                f"{{{inner}}}: the range names more than {MAX_PATTERN_PATHS} paths; list the inputs with --inputs-from",
                "IN",
            )
        return [f"{v:0{width}d}" if width else str(v) for v in values]
    a, b, step = ord(match.group(4)), ord(match.group(5)), abs(int(match.group(6) or 1)) or 1
    values = range(a, b + 1, step) if a <= b else range(a, b - 1, -step)
    return [chr(v) for v in values]
