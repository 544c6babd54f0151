"""The HU window of network space, shared by every stage and stored with every trained model.

Names (splits, doses, body parts, precisions) and the manifest columns are in :mod:`ldct_monai.schema`;
per-command configurations (frozen dataclasses) live with their command's module.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


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
