"""Every example and every link in the README and docs/ works as written.

Each page's fenced code blocks are run word for word, in order, in a fresh
folder that holds the files the pages name (``in.h5``, ``shards/``,
``images.h5``, ... made by ``make_workspace`` below, and a copy of
``sample_data/``):

- ```` ```bash ```` and ```` ```sh ```` blocks run in ``bash -e -o pipefail``
  with the installed ``mixup`` first on PATH; a leading ``pip install ... &&``
  is left out (the test runs on the installed package, which is what that
  install makes);
- ```` ```python ```` blocks run in this interpreter;
- ```` ```text ```` blocks (output, tables, formulas) are not run;
- a runnable block right after ``<!-- not run: REASON -->`` is skipped, and
  the reason must be given (a cluster on other machines, a scheduler);
- a fence without a language is refused: every block says what it is.

The command reference (``docs/reference/``, generated from ``--help``) lists
independent one-line examples: each line runs alone, in its own copy of the
workspace, after the steps in ``REFERENCE_SETUP`` (an output to verify, say).

Links: every relative link (``[text](path#anchor)``, images too) points to a
file of the repository, and an anchor to a heading of that file.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO

PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
# Pages whose examples a test of their own runs (with the files they name and
# the output they show): only their links are checked here.
OWN_RUNNER = {"docs/training.md": "tests/test_training_guide.py"}
RUNNABLE = {"bash": "bash", "sh": "bash", "python": "python"}
NOT_RUN = re.compile(r"^<!-- not run: (\S.*\S) -->$")
PIP_PREFIX = re.compile(r"^pip install [^&]*&&\s*")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# Pages whose examples take seconds or more (16 processes of an array job,
# matplotlib, a Dask cluster, many runs of the executable): run by the whole
# suite. The fast suite keeps the short pages.
SLOW_PAGES = {
    "README.md",
    "docs/sets.md",
    "docs/preview.md",
    "docs/scaling-out.md",
    *(f"docs/{p}.md" for p in ("parquet", "groups", "images", "labels-and-dtypes", "scripts", "checking")),
    "docs/webdataset-output.md",
    "docs/approximate-neighbours.md",  # builds a faiss index and measures its recall
    *(f"docs/reference/{c}.md" for c in ("augment", "verify", "inspect", "preview", "lineage")),
}
# What a command's help examples take as given (a --help example names an
# output already written, or inputs that moved).
REFERENCE_SETUP = {
    "docs/reference/verify.md": ["mixup augment in.h5 out.h5 -q", "mixup augment shards/*.h5 mixed/ --seed 7 -q"],
    "docs/reference/inspect.md": ["mixup augment in.h5 out.h5 -q", "mixup augment shards/*.h5 mixed/ --seed 7 -q"],
    "docs/reference/lineage.md": ["mixup augment in.h5 out.h5 -q"],
}


def page_id(page: Path) -> str:
    return page.relative_to(REPO).as_posix()


# ------------------------------------------------------------------ the pages


def code_blocks(text: str) -> list[tuple[str, str, str | None, int]]:
    """(language, code, reason it is not run or None, line) of each fenced block."""
    blocks, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        indent, language, start = len(m.group(1)), m.group(2), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].strip() == "```")
        code = "\n".join(line[indent:] for line in lines[i + 1 : end])
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        reason = NOT_RUN.match(before)
        blocks.append((language, code, reason.group(1) if reason else None, start + 1))
        i = end + 1
    return blocks


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub gives a page's headings (lower case, punctuation
    dropped, spaces to hyphens, -1, -2 ... for repeats)."""
    anchors, seen = set(), {}
    in_code = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            in_code = not in_code
        m = None if in_code else re.match(r"^#{1,6} (.+?)\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def broken_links(page: Path, root: Path = REPO) -> list[str]:
    text = page.read_text(encoding="utf-8")
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code are code
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if root not in (file, *file.parents):
            broken.append(f"{target}: outside the repository")
        elif not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (file.suffix != ".md" or anchor not in github_anchors(file.read_text(encoding="utf-8"))):
            broken.append(f"{target}: no heading with that anchor")
    return broken


# -------------------------------------------------------------- the workspace


def _h5(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)


def make_workspace(root: Path) -> None:
    """The files the docs' examples name, small and real."""
    rng = np.random.default_rng(0)
    shutil.copytree(REPO / "sample_data", root / "sample_data")
    (root / "docs").mkdir()
    tabular = rng.standard_normal((240, 8)).astype(np.float32)
    labels = rng.integers(0, 10, 240)
    for name in ("in.h5", "train.h5"):
        _h5(root / name, x=tabular, y=labels)
    np.savez(root / "in.npz", x=tabular, y=labels)
    (root / "data").mkdir()
    np.save(root / "data" / "x.npy", tabular)
    np.save(root / "data" / "y.npy", labels)
    for k, rows in enumerate((60, 45, 75)):
        _h5(root / "shards" / f"part-{k:04d}.h5", x=rng.random((rows, 8), dtype=np.float32), y=rng.integers(0, 3, rows))
    images = rng.integers(0, 256, (64, 16, 16, 3), dtype=np.uint8)
    _h5(root / "images.h5", x=images, y=rng.integers(0, 4, 64))
    np.savez(root / "images.npz", x=images)
    np.savez(root / "scans.npz", x=rng.random((32, 1, 16, 16), dtype=np.float32), y=rng.integers(0, 2, 32))
    _h5(root / "spam.h5", x=tabular[:100], y=rng.integers(0, 2, 100).astype(np.int8))
    _h5(root / "tags.h5", x=tabular[:100], y=rng.integers(0, 2, (100, 20)).astype(np.uint8))
    _h5(root / "depth.h5", x=images[:32], y=rng.random((32, 16, 16), dtype=np.float32))
    _h5(root / "seg.h5", x=images[:32], y=rng.integers(0, 5, (32, 16, 16)).astype(np.uint8))
    shutil.copy(root / "seg.h5", root / "masks.h5")
    shutil.copy(root / "train.h5", root / "labels.h5")
    _h5(root / "regression.h5", x=tabular, y=tabular[:, :1] * 2 + 1)
    (root / "shards.txt").write_text("".join(f"shards/{p.name}\n" for p in sorted((root / "shards").iterdir())))
    # docs/parquet.md: a table of eight feature columns and a string label, in row groups of 100
    import pandas as pd

    table = pd.DataFrame({f"f{i}": tabular[:, i] for i in range(8)})
    table["species"] = np.array(["cat", "dog", "emu"])[labels % 3]
    table.to_parquet(root / "train.parquet", row_group_size=100)
    (root / "moved").mkdir()
    shutil.copy(root / "in.h5", root / "moved" / "in.h5")
    shutil.copytree(root / "shards", root / "moved" / "shards")
    _image_inputs(root, rng)


def _image_inputs(root: Path, rng) -> None:
    """photos/<class>/*.jpg|png (two sizes) and samples.tar (WebDataset: .jpg + .cls)."""
    import io
    import tarfile

    from PIL import Image

    for name in ("cat", "dog", "emu"):
        (root / "photos" / name).mkdir(parents=True)
        for i in range(8):
            size = (24, 20) if i % 2 else (30, 18)
            img = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
            img.save(root / "photos" / name / f"{i:03d}.{'png' if i % 3 == 0 else 'jpg'}")
    with tarfile.open(root / "samples.tar", "w") as tar:
        for i in range(24):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(buf, "JPEG")
            for ext, data in (("jpg", buf.getvalue()), ("cls", str(i % 3).encode())):
                info = tarfile.TarInfo(f"{i:06d}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def run_block(language: str, code: str, cwd: Path) -> subprocess.CompletedProcess:
    # As task 3 of a Slurm array --array=0-15 and index 3 of a Kubernetes Indexed Job (--shard slurm, k8s/N).
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "JOB_COMPLETION_INDEX"))}
    env.update(MPLBACKEND="Agg", JOB_COMPLETION_INDEX="3")
    env.update({f"SLURM_ARRAY_TASK_{k}": v for k, v in dict(ID="3", MIN="0", MAX="15", STEP="1", COUNT="16").items()})
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
    if RUNNABLE[language] == "bash":
        code = "\n".join(PIP_PREFIX.sub("", line) for line in code.splitlines())
        argv = ["bash", "-e", "-o", "pipefail", "-c", code]
    else:
        argv = [sys.executable, "-c", code]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize(
    "page", [pytest.param(p, marks=[pytest.mark.slow] if page_id(p) in SLOW_PAGES else []) for p in PAGES], ids=page_id
)
def test_every_example_runs_as_written(page, tmp_path):
    if page_id(page) in OWN_RUNNER:
        pytest.skip(f"run by {OWN_RUNNER[page_id(page)]}")
    blocks = code_blocks(page.read_text(encoding="utf-8"))
    unlabelled = [line for language, _, _, line in blocks if not language]
    assert not unlabelled, f"{page_id(page)}: code blocks without a language at lines {unlabelled}"
    runnable = [b for b in blocks if b[0] in RUNNABLE and b[2] is None]
    if not runnable:
        pytest.skip("no runnable example on this page")
    make_workspace(tmp_path / "ws")
    setup = REFERENCE_SETUP.get(page_id(page))
    if page_id(page).startswith("docs/reference/"):
        for step in setup or ():
            assert run_block("bash", step, tmp_path / "ws").returncode == 0, step
        runnable = [
            (lang, one, None, line) for lang, code, _, line in runnable for one in code.splitlines() if one.strip()
        ]
    for k, (language, code, _, line) in enumerate(runnable):
        cwd = tmp_path / "ws"
        if page_id(page).startswith("docs/reference/"):
            cwd = tmp_path / f"example-{k}"
            shutil.copytree(tmp_path / "ws", cwd, symlinks=True)
        done = run_block(language, code, cwd)
        assert done.returncode == 0, f"{page_id(page)}:{line} exit {done.returncode}\n{code}\n{done.stderr}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_link_resolves(page):
    assert broken_links(page) == []


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 200


# ------------------------------------------------ the checks, shown to fail


def test_a_failing_example_fails_the_page(tmp_path):
    [(language, code, reason, _)] = code_blocks("```bash\nmixup augment missing.h5 out.h5\n```\n")
    assert reason is None
    done = run_block(language, code, tmp_path)
    assert done.returncode == 1 and "missing.h5" in done.stderr


def test_a_block_marked_not_run_needs_a_reason():
    text = "<!-- not run: needs a cluster -->\n\n```bash\nfalse\n```\n<!-- not run: -->\n```bash\nfalse\n```\n"
    assert [b[2] for b in code_blocks(text)] == ["needs a cluster", None]


def test_a_broken_link_and_a_missing_anchor_are_found(tmp_path):
    (tmp_path / "sets.md").write_text("# Sets\n\n## Checking a set\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](sets.md#checking-a-set) [a](no-such-page.md) [b](sets.md#no-such-heading) [c](../README.md)\n"
    )
    assert broken_links(page, root=tmp_path) == [
        "no-such-page.md: no such file",
        "sets.md#no-such-heading: no heading with that anchor",
        "../README.md: outside the repository",
    ]


def test_anchors_follow_github():
    text = "# Sharded datasets: a set of inputs as one dataset\n## `mixup verify OUT`\n## Pairing\n## Pairing\n"
    assert github_anchors(text) == {
        "sharded-datasets-a-set-of-inputs-as-one-dataset",
        "mixup-verify-out",
        "pairing",
        "pairing-1",
    }
