"""Reading a manifest folder: the committed examples follow the contract; reading does not import the builder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from ldct_monai.manifest import load_split
from ldct_monai.schema import DOSE_FILES


def test_committed_examples_follow_the_contract():
    ex = Path(__file__).parents[1] / "manifests" / "examples"
    need = {"patient_id", "body_part", "dose", "series_uid", "sop_uid", "path", "z"}
    for split in DOSE_FILES:
        df = load_split(ex, split)
        assert need <= set(df.columns) and len(df) > 0
        assert set(df["dose"]) == {"low" if split.endswith("_ld") else "full"}
        assert all(p.startswith("/data/LDCT/") for p in df["path"])
    pairs = load_split(ex, "test_pairs")
    assert {"patient_id", "body_part", "z", "ld_path", "fd_path", "ld_sop_uid", "fd_sop_uid"} <= set(pairs.columns)
    assert set(load_split(ex, "skipped").columns) == {"path", "reason", "detail"}
    sj = json.loads((ex / "splits.json").read_text())
    assert {"data_root", "seed", "ratios", "patients", "counts", "version"} <= set(sj)


def test_reading_a_manifest_imports_neither_the_builder_nor_the_scan():
    code = ("import sys, ldct_monai.manifest; "
            "print(sorted(m for m in sys.modules if m in ('ldct_monai.manifest_builder', 'ldct_monai.dicom.scan', 'pydicom')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
