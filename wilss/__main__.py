"""``python -m wilss``: see ``wilss.cli``."""
import sys

from wilss.cli import main

if __name__ == "__main__":
    sys.exit(main())
