"""--resume for the pairings with an index (knn, label-kernel), --balance and --groups:
a killed run, resumed, gives the bytes of an uninterrupted one."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import KILLER, REPO, load_output, read_sidecar, write_h5

from mixup_cli.commands.pipeline import AugmentRequest, augment

_KILLED_RUN = (
    KILLER
    + """
import json, sys
from mixup_cli.commands import pipeline; from mixup_cli.run import resume
resume.SAVE_INTERVAL = 0  # journal every task, so the kill point is exact
src, out, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])

pipeline.augment(pipeline.AugmentRequest(src, out, **options), progress=Killer(out, 700))
raise SystemExit("not killed")
"""
)


@pytest.mark.parametrize(
    "options",
    [
        {"pairing": "within-class", "balance": True},
        {"pairing": "global", "balance_to": 150},
        {"pairing": "knn-within-class", "neighbors": 3, "project": 2},
        {"pairing": "label-kernel", "bandwidth": 0.3, "y_key": "t"},
        {"pairing": "global", "groups": "pid"},
        {"pairing": "between-class", "groups": "pid"},
        {"pairing": "within-class", "groups": "pid", "exclude_rows": "held.txt"},
    ],
)
def test_a_killed_run_resumes_to_the_uninterrupted_bytes(tmp_path, options):
    rng = np.random.default_rng(0)
    labels = rng.permutation(np.repeat([0, 1, 2], [500, 200, 100]))
    src = write_h5(
        tmp_path / "in.h5",
        x=rng.standard_normal((800, 4)).astype(np.float32),
        y=labels,
        t=rng.standard_normal(800),
        pid=rng.integers(0, 40, 800),
    )
    options = dict(options, seed=5, block_rows=100, copies=2, batch_size=30)
    if "exclude_rows" in options:
        (tmp_path / options["exclude_rows"]).write_text("\n".join(map(str, range(0, 800, 7))))
        options["exclude_rows"] = str(tmp_path / options["exclude_rows"])
    out = tmp_path / "out.h5"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_RUN, str(src), str(out), json.dumps(options)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert killed.returncode == 9, killed.stderr
    assert not out.exists()
    augment(AugmentRequest(src, out, resume=True, **options))
    assert read_sidecar(out)["execution"]["resumed_tasks"] > 0
    reference = tmp_path / "ref.h5"
    augment(AugmentRequest(src, reference, **options))
    got, want = load_output(out), load_output(reference)
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].tobytes() == want[key].tobytes(), key
