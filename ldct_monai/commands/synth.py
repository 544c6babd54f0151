"""`ldct-monai synth` command."""

from __future__ import annotations

from pathlib import Path

import typer

from ldct_monai.errors import NotImplementedYet


def synth(out_dir: Path = typer.Argument(..., help="Output tree.")) -> None:
    """Write a synthetic TCIA-style LDCT tree (physics-based simulator)."""
    raise NotImplementedYet("'ldct-monai synth' is not implemented yet.")
