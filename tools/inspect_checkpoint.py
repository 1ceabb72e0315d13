"""`alexnet-jax inspect` as a script; see alexnet_jax/tools/inspect.py.

Not named tools/inspect.py: a script run from this folder puts it first on sys.path, where an
inspect.py would shadow the standard library module of that name."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from alexnet_jax.cli import main  # noqa: E402

sys.exit(main(["inspect", *sys.argv[1:]]))
