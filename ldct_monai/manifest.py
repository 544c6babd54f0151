"""Reading a manifest folder (what train, evaluate and demo need): split CSVs with absolute paths, its hash.

The folder is written by :mod:`ldct_monai.manifest_builder` (``ldct-monai build-manifest``); file names and
columns are in :mod:`ldct_monai.schema`, the contract in docs/manifest.md. Reading never imports the builder
or the DICOM scan.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd

from ldct_monai.errors import InputError
from ldct_monai.schema import PATH_COLUMNS, SPLIT_FILES


def data_root_of(manifest_dir: Path) -> Path:
    """The data root recorded in ``splits.json`` (relative path columns are relative to it)."""
    sj = Path(manifest_dir) / "splits.json"
    if not sj.is_file():
        raise InputError(f"{manifest_dir}: not a manifest folder (no splits.json; run 'ldct-monai build-manifest').")
    try:
        return Path(json.loads(sj.read_text())["data_root"])
    except (ValueError, KeyError) as err:
        raise InputError(f"{sj}: unreadable or without 'data_root' ({err}).") from err


def load_split(manifest_dir: Path, split: str) -> pd.DataFrame:
    """Read one manifest CSV with its path columns made absolute (str).

    Args:
        manifest_dir: folder written by ``build-manifest``.
        split: one of train_ld, train_fd, val_ld, val_fd, test_pairs, skipped.

    Raises:
        InputError: unknown split, missing file, or missing required columns.
    """
    if split not in SPLIT_FILES:
        raise InputError(f"unknown manifest split {split!r} (expected one of {', '.join(SPLIT_FILES)}).")
    path = Path(manifest_dir) / SPLIT_FILES[split]
    if not path.is_file():
        raise InputError(f"{path}: manifest file missing.")
    df = pd.read_csv(path, dtype={"patient_id": str, "series_uid": str, "sop_uid": str})
    root = data_root_of(manifest_dir)
    for col in PATH_COLUMNS:
        if col in df.columns and split != "skipped":
            df[col] = [str(p if Path(p).is_absolute() else root / p) for p in df[col].astype(str)]
    return df


def manifest_hash(manifest_dir: Path) -> str:
    """SHA-256 (first 16 hex digits) over the split CSVs and splits.json: identifies what a model saw."""
    h = hashlib.sha256()
    for name in ["splits.json", *SPLIT_FILES.values()]:
        p = Path(manifest_dir) / name
        if p.is_file():
            h.update(name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:16]
