"""docs/training.md run word for word: its fenced ``python`` and ``bash``
blocks, in order, each as its own process (the installed ``mixup``, this
interpreter), in a folder holding the inputs the page names; what it shows
as printed ("prints:" then a ``text`` block) is what the block before prints.
The PyTorch block runs where torch is installed."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, SAMPLE_H5, write_h5

GUIDE = REPO / "docs" / "training.md"
RUNNABLE = ("python", "bash")


def blocks(text: str) -> list[tuple[str, str, str]]:
    """``(language, code, prose just before it)`` for each fenced block."""
    found, lang, lines, prose = [], None, [], []
    for line in text.splitlines():
        if line.startswith("```"):
            if lang is None:
                lang, lines = line[3:].strip(), []
            else:
                found.append((lang, "\n".join(lines) + "\n", "\n".join(prose).strip()))
                lang, prose = None, []
        elif lang is not None:
            lines.append(line)
        elif line.strip():
            prose.append(line)
    assert lang is None, "a fenced block is not closed"
    return found


def uses_torch(code: str) -> bool:
    return re.search(r"^\s*(import|from) torch\b", code, re.M) is not None


def prepare(folder: Path) -> None:
    """The inputs the page names: the sample digits, uint8 NHWC images, three shards."""
    shutil.copy(SAMPLE_H5, folder / "digits.h5")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 512)
    base = rng.integers(0, 256, (10, 1, 1, 3))  # a colour per class, and noise
    images = np.clip(base[labels] + rng.normal(0, 40, (512, 16, 16, 3)), 0, 255).astype(np.uint8)
    write_h5(folder / "images.h5", x=images, y=labels)
    with h5py.File(SAMPLE_H5, "r") as f:
        x, y = f["x"][()], f["y"][()]
    (folder / "shards").mkdir()
    for k, rows in enumerate(np.array_split(np.arange(len(x)), 3)):
        write_h5(folder / "shards" / f"part-{k}.h5", x=x[rows], y=y[rows])


def run(lang: str, code: str, folder: Path) -> subprocess.CompletedProcess:
    bindir = os.path.dirname(sys.executable)  # this venv's mixup and python first
    env = dict(os.environ, PATH=bindir + os.pathsep + os.environ["PATH"], PYTHONPATH=str(REPO))
    args = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    done = subprocess.run(args, cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"this block of {GUIDE.name} failed:\n{code}\n{done.stderr}"
    return done


def run_guide(folder: Path, with_torch: bool) -> dict[str, str]:
    """Every runnable block in order; the blocks shown as printed checked.
    Returns each block's stdout by its first line."""
    prepare(folder)
    printed, last = {}, None
    for lang, code, prose in blocks(GUIDE.read_text()):
        if lang == "text":
            if prose.endswith("prints:"):
                assert last is not None and last.stdout == code, (
                    f"{GUIDE.name} shows\n{code}\nthe block printed\n{last.stdout}"
                )
            continue
        if uses_torch(code) and not with_torch:
            last = None
            continue
        last = run(lang, code, folder)
        printed[code.splitlines()[0]] = last.stdout
    return printed


def test_every_block_is_runnable_or_marked_text():
    found = blocks(GUIDE.read_text())
    assert {lang for lang, _, _ in found} == {"python", "bash", "text"}
    assert len([b for b in found if b[0] in RUNNABLE]) >= 10
    torch_blocks = [code for lang, code, _ in found if uses_torch(code)]
    assert len(torch_blocks) == 1 and "DataLoader(" in torch_blocks[0]


@pytest.mark.slow  # as the slow docs pages (tests/test_docs_examples.py)
def test_the_guide_runs_word_for_word(tmp_path, monkeypatch):
    printed = run_guide(tmp_path, with_torch=False)
    accuracy = [
        float(m) for out in printed.values() for m in re.findall(r"accuracy on the original rows: ([\d.]+)", out)
    ]
    assert len(accuracy) == 1 and accuracy[0] > 0.85  # trained on mixed rows, right on the original ones
    # The refusal the page shows, from the set the page wrote with one output moved away
    from mixup_cli import InputError, MixupDataset

    (tmp_path / "mixed-set" / "part-1.h5").rename(tmp_path / "part-1.h5")
    shown = [code.strip() for lang, code, _ in blocks(GUIDE.read_text()) if lang == "text" and "incomplete set" in code]
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError) as exc:
        MixupDataset("mixed-set")
    assert shown == [str(exc.value)]


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
def test_the_torch_block_runs_word_for_word(tmp_path):
    printed = run_guide(tmp_path, with_torch=True)
    assert any(out.startswith("last loss: ") for out in printed.values())
