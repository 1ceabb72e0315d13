"""`alexnet-jax bench` as a script; see alexnet_jax/tools/bench.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from alexnet_jax.cli import main  # noqa: E402

sys.exit(main(["bench", *sys.argv[1:]]))
