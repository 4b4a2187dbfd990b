"""The optional C loop of mixup_cli.core; all other metadata is in pyproject.toml.

Built when a C compiler is present; without one the install goes on and the
pure-numpy path (same bytes, slower) is used.
"""

import sys

from setuptools import Extension, setup

# No FMA contraction and no -ffast-math: results must match numpy bit for bit.
# No -march=native either: the build must run on any CPU of its architecture.
if sys.platform == "win32":
    args = ["/O2", "/fp:precise"]
else:
    args = ["-O3", "-ffp-contract=off", "-fno-fast-math"]

setup(ext_modules=[Extension("mixup_cli._kernel", ["mixup_cli/_kernel.c"], extra_compile_args=args, optional=True)])
