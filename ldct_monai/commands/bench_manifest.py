"""`ldct-monai bench manifest` command."""

from __future__ import annotations

from ldct_monai.errors import NotImplementedYet


def bench_manifest() -> None:
    """Benchmark manifest throughput against a reference measured in the same process."""
    raise NotImplementedYet("'ldct-monai bench manifest' is not implemented yet.")
