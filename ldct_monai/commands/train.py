"""`ldct-monai train` command."""

from __future__ import annotations

from pathlib import Path

import typer

from ldct_monai.errors import NotImplementedYet


def train(manifest: Path = typer.Option(..., "--manifest", help="Manifest folder.")) -> None:
    """Train the CycleGAN on a manifest."""
    raise NotImplementedYet("'ldct-monai train' is not implemented yet.")
