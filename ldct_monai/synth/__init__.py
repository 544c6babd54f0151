"""Physics-based low-dose CT simulator: phantoms, parallel-beam projector/FBP, dose model, tree writer.

Public entry points:

- :class:`SynthConfig` and :func:`synth_tree` write a TCIA-style tree of full-dose / low-dose series.
- :func:`simulate_low_dose_series` adds projection-domain low-dose noise to a real full-dose series.

Heavy imports (torch) happen inside the functions, so importing this package is cheap.
"""

from __future__ import annotations

from ldct_monai.synth.from_series import simulate_low_dose_series
from ldct_monai.synth.tree import FULL_DOSE_DESCRIPTION, LOW_DOSE_DESCRIPTION, SynthConfig, synth_tree

__all__ = [
    "FULL_DOSE_DESCRIPTION",
    "LOW_DOSE_DESCRIPTION",
    "SynthConfig",
    "simulate_low_dose_series",
    "synth_tree",
]
