"""`ldct-monai evaluate` command."""

from __future__ import annotations

from pathlib import Path

import typer

from ldct_monai.errors import NotImplementedYet


def evaluate(manifest: Path = typer.Option(..., "--manifest", help="Manifest folder.")) -> None:
    """Paired test metrics and figures for a model."""
    raise NotImplementedYet("'ldct-monai evaluate' is not implemented yet.")
