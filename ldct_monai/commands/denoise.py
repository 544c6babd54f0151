"""`ldct-monai denoise` command."""

from __future__ import annotations

from pathlib import Path

import typer

from ldct_monai.errors import NotImplementedYet


def denoise(series_dir: Path = typer.Argument(..., help="Folder with one CT series."), out_dir: Path = typer.Argument(..., help="Output folder.")) -> None:
    """Denoise a DICOM CT series into a derived DICOM series."""
    raise NotImplementedYet("'ldct-monai denoise' is not implemented yet.")
