"""The manifest schema: split, dose, body-part and precision names, manifest files and columns.

One vocabulary for every stage (scan, build-manifest, data, engine, evaluate, synth): a body part is one of
:class:`BodyPart`, whatever spelling a patient ID, a manifest or a vendor's BodyPartExamined uses
(:func:`parse_body_part`). The file layout and its rules are documented in docs/manifest.md. Imports
neither torch nor pandas: the CLI imports it.
"""

from __future__ import annotations

import enum

from ldct_monai.errors import InputError


class _Name(str, enum.Enum):
    """A name that is its value wherever it is printed, formatted or written (str, f-strings, CSV, JSON)."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Split(_Name):
    """Patient split of a manifest."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


SPLITS: tuple[str, ...] = tuple(s.value for s in Split)


class Dose(_Name):
    """Dose of a series; the value is what manifests store in their ``dose`` column."""

    LOW = "low"  # `ld` in code and file names
    FULL = "full"  # `fd`


class BodyPart(str, enum.Enum):
    """Body part; the value is the TCIA patient prefix (C###, L###, N###) that manifests store."""

    CHEST = "C"
    ABDOMEN = "L"  # TCIA "L" = liver / abdomen
    HEAD = "N"  # TCIA "N" = neuro / head


# Body parts in a fixed order: the index of a body part in the discriminators' one-hot condition.
BODY_PARTS: tuple[str, ...] = tuple(b.value for b in BodyPart)

# Names for people (tables, figure titles).
BODY_PART_NAMES: dict[str, str] = {BodyPart.CHEST.value: "chest", BodyPart.ABDOMEN.value: "abdomen",
                                   BodyPart.HEAD.value: "head"}

# DICOM BodyPartExamined that `synth` writes.
BODY_PART_EXAMINED: dict[BodyPart, str] = {BodyPart.CHEST: "CHEST", BodyPart.ABDOMEN: "ABDOMEN", BodyPart.HEAD: "HEAD"}

# Every accepted spelling, after :func:`_normalise` (upper case, no spaces, '_', '-', '&' or '/'): the codes,
# the enum names, and vendor BodyPartExamined values (DICOM PS3.16 CID 4031 and common free text). A dose
# protocol follows the body part, so the pelvis counts as abdomen.
BODY_PART_ALIASES: dict[str, BodyPart] = {
    **{b.value: b for b in BodyPart},
    **{b.name: b for b in BodyPart},
    "THORAX": BodyPart.CHEST, "LUNG": BodyPart.CHEST, "LUNGS": BodyPart.CHEST,
    "ABD": BodyPart.ABDOMEN, "LIVER": BodyPart.ABDOMEN, "PELVIS": BodyPart.ABDOMEN,
    "ABDOMENPELVIS": BodyPart.ABDOMEN, "ABDPELVIS": BodyPart.ABDOMEN,
    "BRAIN": BodyPart.HEAD, "SKULL": BodyPart.HEAD, "NEURO": BodyPart.HEAD,
}  # fmt: skip


def _normalise(value: object) -> str:
    text = "" if value is None else str(getattr(value, "value", value))
    return "".join(ch for ch in text.upper() if ch not in " _-&/\t")


def parse_body_part(value: object) -> BodyPart | None:
    """The body part of a code (C / L / N), a name or a BodyPartExamined spelling, any case; None if unknown.

    Examples: ``'L'``, ``'abdomen'``, ``'PELVIS'``, ``'Abdomen Pelvis'`` -> ``BodyPart.ABDOMEN``; ``''`` -> None.
    """
    if isinstance(value, BodyPart):
        return value
    return BODY_PART_ALIASES.get(_normalise(value))


def body_part_of(value: object) -> BodyPart:
    """Like :func:`parse_body_part`, for values that must be a body part (a manifest's ``body_part``).

    Raises:
        InputError: the value is not a known spelling.
    """
    bp = parse_body_part(value)
    if bp is None:
        raise InputError(f"unknown body part {value!r} (expected C/CHEST, L/ABDOMEN or N/HEAD, or a "
                         f"BodyPartExamined such as THORAX, PELVIS, BRAIN).")
    return bp


def body_part_index(value: object) -> int:
    """Index of a body part in :data:`BODY_PARTS` (any accepted spelling); -1 when unknown or empty."""
    bp = parse_body_part(value)
    return -1 if bp is None else BODY_PARTS.index(bp.value)


def body_part_name(value: object) -> str:
    """'chest' / 'abdomen' / 'head' for any accepted spelling; the value itself when unknown."""
    bp = parse_body_part(value)
    return str(value) if bp is None else BODY_PART_NAMES[bp.value]


# Precisions of training and inference (autocast dtype; fp16 adds a GradScaler when training).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
DICOM_OUTPUT_PRECISIONS: tuple[str, ...] = ("fp32", "bf16")  # denoise and bench denoise (fp16 is not offered there)

# ---------------------------------------------------------------------------------------------------
# Manifest files and columns (docs/manifest.md)

SPLIT_FILES: dict[str, str] = {
    "train_ld": "train_ld.csv",
    "train_fd": "train_fd.csv",
    "val_ld": "val_ld.csv",
    "val_fd": "val_fd.csv",
    "test_pairs": "test_pairs.csv",
    "train_pairs": "train_pairs.csv",  # --paired only: train patients with both doses, matched on z
    "val_pairs": "val_pairs.csv",  # --paired only
    "skipped": "skipped.csv",
}
DOSE_FILES: tuple[str, ...] = ("train_ld", "train_fd", "val_ld", "val_fd")
PATH_COLUMNS: tuple[str, ...] = ("path", "ld_path", "fd_path")  # relative to splits.json's data_root, or absolute

DOSE_COLUMNS: tuple[str, ...] = (
    "patient_id", "body_part", "dose", "series_uid", "sop_uid", "path", "z",
    "study_uid", "series_description", "instance_number", "rows", "cols",
    "pixel_spacing_row", "pixel_spacing_col", "slice_thickness",
    "kvp", "tube_current", "exposure", "ctdivol", "kernel", "manufacturer",
)  # fmt: skip
PAIR_COLUMNS: tuple[str, ...] = (
    "patient_id", "body_part", "z", "ld_path", "fd_path", "ld_sop_uid", "fd_sop_uid",
    "ld_z", "fd_z", "ld_series_uid", "fd_series_uid", "study_uid",
    "rows", "cols", "pixel_spacing_row", "pixel_spacing_col", "slice_thickness", "kernel",
)  # fmt: skip
SKIPPED_COLUMNS: tuple[str, ...] = ("path", "reason", "detail")
