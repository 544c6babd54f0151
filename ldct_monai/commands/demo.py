"""`ldct-monai demo` command."""

from __future__ import annotations

from pathlib import Path

import typer

from ldct_monai.errors import NotImplementedYet


def demo(out: Path = typer.Option(Path("demo_out"), "--out", help="Output folder.")) -> None:
    """Run the whole pipeline on synthetic data."""
    raise NotImplementedYet("'ldct-monai demo' is not implemented yet.")
