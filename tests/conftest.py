"""Shared pytest setup."""
import os

# Before torch loads OpenMP, as the entry points do (wilss/__main__.py, docs/performance.md): on a CPU shared with
# other work, spinning OpenMP threads made the tests ~10x slower.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
