"""``python -m wilss``: see ``wilss.cli``."""
import os
import sys

# Before torch loads OpenMP: waiting threads sleep instead of spinning. On a CPU shared with other work, spinning
# threads wait out whole time slices at every parallel region (an update iteration measured 10x slower with the
# default policy under load, docs/performance.md). An explicit OMP_WAIT_POLICY in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from wilss.cli import main  # noqa: E402  (after the OpenMP setting)

if __name__ == "__main__":
    sys.exit(main())
