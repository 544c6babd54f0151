"""`ldct-monai bench denoise` command."""

from __future__ import annotations

from ldct_monai.errors import NotImplementedYet


def bench_denoise() -> None:
    """Benchmark denoise throughput against a reference measured in the same process."""
    raise NotImplementedYet("'ldct-monai bench denoise' is not implemented yet.")
