"""``mixup verify OUTDIR`` runs on each output of a set the law checks it runs
on one output (the pairing's law, lam's Beta law, class and batch laws, the
groups, the rows held out), against the labels of the whole set: honest
outputs pass, a planted wrong law fails, even where every byte matches its
own recomputation."""

from __future__ import annotations

import dataclasses

import h5py
import numpy as np
import pytest
from conftest import write_h5

from mixup_cli.commands.augment_set import augment_set
from mixup_cli.commands.pipeline import AugmentRequest
from mixup_cli.verify import verify_set

SIZES = (700, 333, 900, 467)  # 2,400 rows, off the 256-row block boundaries
BLOCK = 256


def make_set(tmp_path, n_classes=4):
    rng = np.random.default_rng(1)
    n = sum(SIZES)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    y = rng.integers(0, n_classes, n)
    paths, at = [], 0
    for k, m in enumerate(SIZES):
        paths.append(write_h5(tmp_path / f"part-{k}.h5", chunks=False, x=x[at : at + m], y=y[at : at + m]))
        at += m
    return paths, y


def run_set(tmp_path, paths, **options):
    outdir = tmp_path / "set"
    request = AugmentRequest(paths[0], outdir, command_line=[], seed=5, block_rows=BLOCK, alpha=0.4, **options)
    augment_set(request, paths, outdir)
    return outdir


def law_checks(outdir):
    report = verify_set(outdir)
    return report, {rep.output.name: c for rep in report.reports.values() for c in rep.checks if c.name == "law"}


@pytest.mark.slow
@pytest.mark.parametrize(
    "pairing, tested",
    [
        ("global", "partner counts, partner independent of the row, own-block share"),
        ("batch", "partners within their group of rows, each row once"),
        ("within-class", "partner classes"),
    ],
)
def test_honest_outputs_pass_with_the_laws_of_one_output(tmp_path, pairing, tested):
    paths, _ = make_set(tmp_path)
    outdir = run_set(tmp_path, paths, pairing=pairing, copies=2)
    report, laws = law_checks(outdir)
    assert report.ok, report.problems
    assert sorted(laws) == sorted(p.name for p in paths)
    for name, check in laws.items():
        assert check.ok and f"plausible under --pairing {pairing} (tested: lam, {tested})" in check.detail, name


def test_a_planted_wrong_plan_whose_bytes_match_fails_the_law(tmp_path, monkeypatch):
    """A planner that draws plan version 1's block cycle while recording version
    2: every output equals its recomputation, the law check does not hold."""
    from mixup_cli.mixing import sampling

    tasks, draw = sampling.Plan.tasks, sampling.Plan.draw
    as_cycle = lambda plan: dataclasses.replace(plan, version=1)  # noqa: E731
    monkeypatch.setattr(sampling.Plan, "tasks", lambda self: tasks(as_cycle(self)))
    monkeypatch.setattr(sampling.Plan, "draw", lambda self, task: draw(as_cycle(self), task))
    paths, _ = make_set(tmp_path)
    outdir = run_set(tmp_path, paths, pairing="global", copies=2)
    report, laws = law_checks(outdir)
    assert not report.ok
    for rep in report.reports.values():
        assert all(c.ok for c in rep.checks if c.name == "recompute")
    failed = [name for name, check in laws.items() if not check.ok]
    assert failed and all("p < 1e-06" in laws[name].detail for name in failed)
    assert any(f"{outdir / name}: law:" in line for name in failed for line in report.problems)


def test_batch_partners_edited_across_the_groups_fail(tmp_path):
    paths, _ = make_set(tmp_path)
    outdir = run_set(tmp_path, paths, pairing="batch")
    out = outdir / paths[2].name  # set rows 1033..1932: blocks 5 to 6 lie whole in it
    with h5py.File(out, "r+") as f:
        partner = f["partner"][()]
        partner[300:340] = partner[300:340][::-1] + 1  # rows 1333..1372 (block 5) take partners off their block
        f["partner"][...] = partner
    _, laws = law_checks(outdir)
    assert "not a permutation" in laws[paths[2].name].detail and not laws[paths[2].name].ok
    assert all(laws[p.name].ok for p in paths if p != paths[2])


def test_a_partner_of_another_class_fails_within_class(tmp_path):
    paths, y = make_set(tmp_path)
    outdir = run_set(tmp_path, paths, pairing="within-class")
    out = outdir / paths[1].name
    with h5py.File(out, "r+") as f:
        partner = f["partner"][()]
        partner[7] = int(np.flatnonzero(y != y[700 + 7])[0])
        f["partner"][...] = partner
    _, laws = law_checks(outdir)
    assert not laws[paths[1].name].ok and "output row 7: its partner is of another class" in laws[paths[1].name].detail
