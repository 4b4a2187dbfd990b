"""Benchmarks measure the installed package, never the checkout's sources."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO

# The checkout everywhere a script could pick it up from: PYTHONPATH, the
# current directory, and sys.path itself.
PROBE = (
    "import sys; sys.path.insert(0, 'bench'); sys.path.insert(0, ''); import installed, json, mixup_cli; "
    "print(json.dumps([sys.path, installed.env().get('PYTHONPATH', ''), mixup_cli.__file__]))"
)


def run(args, **env):
    return subprocess.run(
        args, cwd=REPO, capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO), **env)
    )


def test_the_checkout_is_not_imported():
    done = run([sys.executable, "-c", PROBE])
    if done.returncode == 2:  # not installed for this interpreter: the sources on every path were not taken
        assert done.stderr.strip().splitlines() == [
            "mixup-cli is not installed for this interpreter: run `pip install .` in the repository first"
        ]
        return
    assert done.returncode == 0, done.stderr
    path, pythonpath, imported = json.loads(done.stdout)
    assert str(REPO) not in path and "" not in path
    assert str(REPO) not in pythonpath.split(os.pathsep)
    # An editable install of this checkout is the installed package too; its kernel is checked below.
    assert os.path.exists(imported)


@pytest.mark.slow  # two benchmark runs
def test_a_benchmark_refuses_the_numpy_loop_unless_allowed():
    refused = run([sys.executable, "bench/bench_core.py", "--rows", "8", "--repeats", "1"], MIXUP_CLI_KERNEL="numpy")
    assert refused.returncode == 2 and refused.stdout == ""
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "`pip install .`" in lines[0], refused.stderr
    if "not installed" in lines[0]:
        return
    assert "python setup.py build_ext --inplace" in lines[0] and "--allow-numpy" in lines[0]
    allowed = run(
        [sys.executable, "bench/bench_core.py", "--rows", "8", "--repeats", "1", "--allow-numpy"],
        MIXUP_CLI_KERNEL="numpy",
    )
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.splitlines()[0].endswith("core.KERNEL = 'numpy'")
