"""One body-part table: every stage reads PELVIS, THORAX, BRAIN... the same way; split and dose names print as values."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydicom.dataset import Dataset

from ldct_monai.errors import InputError
from ldct_monai.schema import (
    BODY_PART_ALIASES,
    BODY_PARTS,
    BodyPart,
    Dose,
    Split,
    body_part_index,
    body_part_name,
    body_part_of,
    parse_body_part,
)

VENDOR_SPELLINGS = {
    BodyPart.CHEST: ["C", "c", "CHEST", "chest", "Thorax", "LUNG", "LUNGS"],
    BodyPart.ABDOMEN: ["L", "ABDOMEN", "abdomen", "ABD", "LIVER", "PELVIS", "pelvis", "ABDOMENPELVIS",
                       "Abdomen Pelvis", "ABDOMEN_PELVIS", "ABD-PELVIS", "ABDPELVIS"],
    BodyPart.HEAD: ["N", "HEAD", "head", "BRAIN", "Skull", "NEURO"],
}


def test_every_spelling_names_one_body_part():
    for bp, spellings in VENDOR_SPELLINGS.items():
        for s in spellings:
            assert parse_body_part(s) is bp, s
            assert body_part_of(s) is bp
            assert body_part_index(s) == BODY_PARTS.index(bp.value)
    assert set(BODY_PART_ALIASES.values()) == set(BodyPart)


def test_unknown_body_parts():
    for v in ("", None, "KNEE", "X", float("nan"), "all"):
        assert parse_body_part(v) is None
        assert body_part_index(v) == -1
    with pytest.raises(InputError, match="unknown body part 'KNEE'"):
        body_part_of("KNEE")
    assert body_part_name("PELVIS") == "abdomen" and body_part_name("all") == "all"


def test_pelvis_is_abdomen_in_every_stage():
    from ldct_monai.manifest_builder import resolve_body_part
    from ldct_monai.metrics import LDCTBENCH_WINDOWS, slice_metrics
    from ldct_monai.synth.from_series import _body_part

    assert resolve_body_part("anon-1", ["PELVIS", "PELVIS"], None) == "L"  # build-manifest
    assert resolve_body_part("anon-2", ["THORAX"], None) == "C"
    assert resolve_body_part("anon-3", ["KNEE"], None) is None
    ds = Dataset()
    ds.BodyPartExamined = "PELVIS"
    assert _body_part(ds, None, "series") is BodyPart.ABDOMEN  # synth --from-series: the abdomen dose protocol
    assert body_part_index("PELVIS") == BODY_PARTS.index("L")  # training: the discriminators' condition
    img = np.zeros((16, 16), np.float32)
    assert slice_metrics(img, img + 10, "PELVIS") == slice_metrics(img, img + 10, BodyPart.ABDOMEN)  # evaluate
    assert LDCTBENCH_WINDOWS[body_part_of("PELVIS")] is LDCTBENCH_WINDOWS[BodyPart.ABDOMEN]


def test_split_and_dose_names_are_their_values():
    assert f"{Split.TRAIN}_ld" == "train_ld" and str(Dose.LOW) == "low" and Split.VAL == "val"
    assert json.dumps({Split.TEST: Dose.FULL}) == '{"test": "full"}'
