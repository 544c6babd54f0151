"""`ldct-monai bench train` command."""

from __future__ import annotations

from ldct_monai.errors import NotImplementedYet


def bench_train() -> None:
    """Benchmark train throughput against a reference measured in the same process."""
    raise NotImplementedYet("'ldct-monai bench train' is not implemented yet.")
