"""Reconstruction kernels and iterative reconstruction of a real series, read from its DICOM header.

The simulator's noise texture comes from the series' own pixels (:mod:`ldct_monai.synth.nps`); the
header tells what to expect and what to fall back on when a series has too little flat tissue to
measure: the ``ConvolutionKernel`` name is mapped to a class (smooth / standard / sharp / lung), each
with a typical noise-power peak in cycles/mm, and iterative reconstructions (which change the texture
in a dose-dependent way that FBP scaling does not model) are detected and reported.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

#: Typical frequency (cycles/mm) of the noise-power maximum of each class. Mayo Siemens B30f at 0.7 mm
#: pixels peaks near 0.15 cycles/pixel (0.21 /mm), D45f near 0.47 cycles/pixel (0.67 /mm); GE STANDARD
#: and Philips B near 0.3 /mm (measured on the real series of docs/simulator.md).
PEAK_PER_MM = {"smooth": 0.21, "standard": 0.32, "sharp": 0.55, "lung": 0.65}


@dataclass(frozen=True)
class KernelInfo:
    """What the header says about a series' reconstruction.

    Attributes:
        name: ConvolutionKernel as written ("" when absent).
        kernel_class: smooth, standard, sharp or lung; "unknown" for names not in the table.
        iterative: name of the iterative reconstruction detected (iDose, ASiR, SAFIRE, ...), or None.
    """

    name: str
    kernel_class: str
    iterative: str | None

    def prior_peak(self, spacing_mm: float) -> float:
        """Expected NPS peak in cycles/pixel for this class at ``spacing_mm`` (standard when unknown)."""
        per_mm = PEAK_PER_MM.get(self.kernel_class, PEAK_PER_MM["standard"])
        return min(0.5, per_mm * spacing_mm)


# (vendor regex on Manufacturer, kernel regex on ConvolutionKernel, class). First match wins.
_RULES: tuple[tuple[str, str, str], ...] = (
    # Siemens: B (body) / Br, H (head) / Hr, D, I (SAFIRE), Q (ADMIRE), with a sharpness number
    ("siemens", r"^[BHIQ]r?(\d\d)", "siemens-number"),
    ("siemens", r"^[DUSTC](\d\d)", "siemens-number"),
    # GE
    ("ge", r"^SOFT", "smooth"),
    ("ge", r"^(STANDARD|STND|DETAIL)", "standard"),
    ("ge", r"^(LUNG|BONE|BONEPLUS|EDGE|CHST)", "lung"),
    # Philips: A / UA (smooth), B / UB / EB (standard), C / D / E (sharp), L / Y* / YA... (lung, bone)
    ("philips", r"^(U?A|EA)$", "smooth"),
    ("philips", r"^(U?B|EB)$", "standard"),
    ("philips", r"^(C|D|E|EC|UC)$", "sharp"),
    ("philips", r"^(L|LA|Y.*|YA|YB|YC|YD)$", "lung"),
    # Canon / Toshiba: FC01-FC09 body soft, FC1x head, FC3x-FC5x lung and bone
    ("canon|toshiba", r"^FC0?[1-9]$", "smooth"),
    ("canon|toshiba", r"^FC1\d$", "standard"),
    ("canon|toshiba", r"^FC[3-8]\d$", "lung"),
    # names common to several vendors
    ("", r"SOFT|SMOOTH", "smooth"),
    ("", r"STANDARD|STD", "standard"),
    ("", r"SHARP|DETAIL", "sharp"),
    ("", r"LUNG|BONE", "lung"),
)

# Iterative reconstructions: (pattern searched in the header text, name).
_ITERATIVE = (
    (r"IDOSE", "iDose"),
    (r"\bIMR\b", "IMR"),
    (r"ASIR|ASIR-V|\bVEO\b", "ASiR"),
    (r"SAFIRE", "SAFIRE"),
    (r"ADMIRE", "ADMIRE"),
    (r"AIDR", "AIDR"),
    (r"TRUEFIDELITY|TRUE FIDELITY|\bDLIR\b", "TrueFidelity"),
)


def classify_kernel(ds) -> KernelInfo:
    """Kernel class and iterative reconstruction of a CT dataset (header only).

    Siemens names carry a number: up to 30 smooth, 31-45 standard, 46-60 sharp, above 60 lung.
    A Siemens kernel starting with I (SAFIRE) or Q (ADMIRE) is also an iterative reconstruction.
    """
    from pydicom.multival import MultiValue

    raw = getattr(ds, "ConvolutionKernel", "") or ""
    name = "\\".join(str(v) for v in raw) if isinstance(raw, MultiValue) else str(raw)
    vendor = str(getattr(ds, "Manufacturer", "") or "").lower()
    first = name.split("\\")[0].strip().upper()
    kernel_class = "unknown"
    for vendor_rx, kernel_rx, cls in _RULES:
        if vendor_rx and not re.search(vendor_rx, vendor):
            continue
        m = re.search(kernel_rx, first)
        if m:
            if cls == "siemens-number":
                n = int(m.group(1))
                cls = "smooth" if n <= 30 else "standard" if n <= 45 else "sharp" if n <= 60 else "lung"
            kernel_class = cls
            break
    text = " ".join(
        str(getattr(ds, key, "") or "") for key in ("SeriesDescription", "ImageComments", "ProtocolName", "ReconstructionMethod")
    ).upper()
    iterative = next((label for rx, label in _ITERATIVE if re.search(rx, text)), None)
    if iterative is None and "siemens" in vendor and re.match(r"^[IQ]", first):
        iterative = "SAFIRE" if first.startswith("I") else "ADMIRE"
    return KernelInfo(name=name, kernel_class=kernel_class, iterative=iterative)


def prior_nps(freq: np.ndarray, peak: float) -> np.ndarray:
    """Radial NPS shape of an FBP kernel whose noise peaks at ``peak`` cycles/pixel (unit maximum).

    ``NPS(f) = f cos^2(pi f / 2 f_c)`` (ramp times a Hann window) for f below ``f_c``, which peaks at
    ``f = 0.416 f_c``; the window is cut at Nyquist when ``f_c`` lies beyond it.
    """
    fc = max(peak, 1e-3) / 0.4158
    shape = np.where(freq < fc, freq * np.cos(math.pi * freq / (2 * fc)) ** 2, 0.0)
    return shape / max(shape.max(), 1e-30)
