"""`ldct-monai build-manifest` command."""

from __future__ import annotations

from pathlib import Path

import typer

from ldct_monai.errors import NotImplementedYet


def build_manifest(data_root: Path = typer.Argument(..., help="Root of the DICOM tree.")) -> None:
    """Scan a TCIA LDCT tree and write patient-disjoint train/val/test manifests."""
    raise NotImplementedYet("'ldct-monai build-manifest' is not implemented yet.")
