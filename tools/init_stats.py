"""`alexnet-jax init-stats` as a script; see alexnet_jax/tools/init_stats.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository root

from alexnet_jax.cli import main  # noqa: E402

sys.exit(main(["init-stats", *sys.argv[1:]]))
