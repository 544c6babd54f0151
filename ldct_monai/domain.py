"""What a model was trained on, and whether a series is inside it.

A denoiser learns the noise texture of the kernels, pixel sizes and slice thicknesses it saw: a sharp
kernel's noise peaks near 0.45 cycles/pixel, a smooth one's near 0.15, and thick slices are far quieter
than thin ones. Run outside them, it under- or over-smooths without any error. So every exported model
carries a ``training_domain`` (from its training manifest) and ``denoise`` warns, naming the series, when a
series' header is outside it.

The tolerances are deliberately loose (a warning, not a refusal): pixel spacing within x0.8 .. x1.25 of
the trained range, slice thickness within x0.67 .. x1.5, and a kernel class (smooth / standard / sharp /
lung, :mod:`ldct_monai.synth.kernels`) among those trained on.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

log = logging.getLogger(__name__)

SPACING_TOLERANCE = (0.8, 1.25)  # factors on the trained pixel-spacing range
THICKNESS_TOLERANCE = (1 / 1.5, 1.5)  # factors on the trained slice-thickness range


def _range(values) -> list[float] | None:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v)) and float(v) > 0]
    return [round(min(vals), 4), round(max(vals), 4)] if vals else None


def training_domain(manifest_dir: Path) -> dict[str, Any] | None:
    """``{"kernel_classes", "kernels", "pixel_spacing_mm", "slice_thickness_mm", "body_parts"}`` of the
    training split of a manifest (``train_ld.csv`` and ``train_fd.csv``), or None when it has no such rows.

    Kernel classes come from the (Manufacturer, ConvolutionKernel) columns through
    :func:`ldct_monai.synth.kernels.classify_kernel`; ranges are [min, max] in mm.
    """
    import pandas as pd

    from ldct_monai.schema import SPLIT_FILES
    from ldct_monai.synth.kernels import classify_kernel

    frames = []
    for split in ("train_ld", "train_fd"):
        path = Path(manifest_dir) / SPLIT_FILES[split]
        if path.is_file():
            frames.append(pd.read_csv(path, dtype=str, keep_default_na=False))
    if not frames:
        return None
    df = pd.concat(frames, ignore_index=True)
    if df.empty:
        return None
    col = lambda c: df[c] if c in df.columns else pd.Series([""] * len(df))  # noqa: E731
    kernels = sorted({(m, k) for m, k in zip(col("manufacturer"), col("kernel"), strict=True)})
    # "unknown" (a name the vendor table does not know, e.g. the phantoms' B30f without a Siemens Manufacturer)
    # says nothing about texture: it is not a class trained on, so an unknown kernel at denoise time warns
    classes = sorted({classify_kernel(SimpleNamespace(ConvolutionKernel=k, Manufacturer=m)).kernel_class
                      for m, k in kernels} - {"unknown"})
    num = lambda c: pd.to_numeric(col(c), errors="coerce")  # noqa: E731
    return {
        "kernel_classes": classes,
        "kernels": sorted({k for _, k in kernels if k}),
        "pixel_spacing_mm": _range(num("pixel_spacing_row")),
        "slice_thickness_mm": _range(num("slice_thickness")),
        "body_parts": sorted({b for b in col("body_part") if b}),
    }


def outside_domain(domain: dict[str, Any] | None, ds) -> list[str]:
    """How the header ``ds`` (one slice of a series) is outside a model's ``training_domain``: one short
    phrase per problem, empty when it is inside (or when the model records no domain)."""
    if not domain:
        return []
    from ldct_monai.synth.kernels import classify_kernel

    problems: list[str] = []
    info = classify_kernel(ds)
    classes = domain.get("kernel_classes") or []
    if classes and info.kernel_class not in classes:
        what = f"kernel {info.name!r}" if info.name else "no ConvolutionKernel"
        problems.append(f"{what} ({info.kernel_class}) is not a kernel class it was trained on ({', '.join(classes)})")
    checks = (("pixel spacing", "pixel_spacing_mm", SPACING_TOLERANCE,
               (getattr(ds, "PixelSpacing", None) or [None])[0]),
              ("slice thickness", "slice_thickness_mm", THICKNESS_TOLERANCE, getattr(ds, "SliceThickness", None)))
    for label, key, (lo_f, hi_f), value in checks:
        rng = domain.get(key)
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if rng and not (rng[0] * lo_f <= v <= rng[1] * hi_f):
            problems.append(f"{label} {v:g} mm is outside its training range {rng[0]:g}-{rng[1]:g} mm")
    return problems


def warn_if_outside(domain: dict[str, Any] | None, ds, where: str, model_name: str) -> list[str]:
    """Log one warning naming ``where`` (the series) when ``ds`` is outside ``domain``; returns the problems."""
    problems = outside_domain(domain, ds)
    if problems:
        log.warning("%s: outside what %s was trained on: %s; check the output (or adapt the model: "
                    "docs/training.md, fine-tuning).", where, model_name, "; ".join(problems))
    return problems
