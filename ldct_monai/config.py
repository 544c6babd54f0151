"""Conventions shared by every stage: dose and body-part names, the HU window of network space.

Per-command configurations (frozen dataclasses) live with their command's module; this file holds only
what all of them agree on.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass

import numpy as np


class Dose(str, enum.Enum):
    """Dose of a series; the value is what manifests store in their ``dose`` column."""

    LOW = "low"  # `ld` in code and file names
    FULL = "full"  # `fd`


class BodyPart(str, enum.Enum):
    """Body part from the TCIA patient prefix (C###, L###, N###)."""

    CHEST = "C"
    ABDOMEN = "L"  # TCIA "L" = liver / abdomen
    HEAD = "N"  # TCIA "N" = neuro / head


# Body parts in a fixed order: the index of a body part in the discriminators' one-hot condition.
BODY_PARTS: tuple[str, ...] = tuple(b.value for b in BodyPart)


def body_part_index(value: object) -> int:
    """Index of a body-part code (C / L / N, any case) in :data:`BODY_PARTS`; -1 when unknown or empty."""
    code = str(value).strip().upper() if value is not None else ""
    return BODY_PARTS.index(code) if code in BODY_PARTS else -1


# DICOM BodyPartExamined values written by `synth` and recognised by `build-manifest`.
BODY_PART_EXAMINED = {BodyPart.CHEST: "CHEST", BodyPart.ABDOMEN: "ABDOMEN", BodyPart.HEAD: "HEAD"}


@dataclass(frozen=True)
class HUWindow:
    """Linear map between Hounsfield units and network space [-1, 1], with clipping.

    The default [-1024, 3071] HU is the full 12-bit CT range, as in the MathWorks example's
    ``normalizeCTImages``. Stored with every trained model so inference uses the same map.
    """

    low: float = -1024.0  # HU mapped to -1
    high: float = 3071.0  # HU mapped to +1

    def __post_init__(self) -> None:
        if not self.high > self.low:
            raise ValueError(f"HU window needs high > low, found low={self.low}, high={self.high}.")

    def to_unit(self, hu: np.ndarray) -> np.ndarray:
        """HU -> [-1, 1], clipping values outside the window first."""
        hu = np.clip(hu, self.low, self.high)
        return ((hu - self.low) / (self.high - self.low) * 2.0 - 1.0).astype(np.float32)

    def to_hu(self, x: np.ndarray) -> np.ndarray:
        """[-1, 1] -> HU (clips to [-1, 1] first, so the result stays inside the window)."""
        x = np.clip(x, -1.0, 1.0)
        return ((x + 1.0) * 0.5 * (self.high - self.low) + self.low).astype(np.float32)

    def asdict(self) -> dict[str, float]:
        return asdict(self)


DEFAULT_HU_WINDOW = HUWindow()
