"""Simulated low-dose series for a real full-dose CT series (projection-domain noise insertion).

The series' own image is forward-projected into a sinogram that stands in for the measured full-dose
projections, Yu et al. (2012) noise for the requested dose fraction is inserted there and reconstructed
with the simulator's FBP, and the result is added to the original pixels. The low-dose series is a
derived copy of the source: same patient, study, frame of reference, geometry and pixel encoding; new
Series/SOP Instance UIDs, SeriesDescription "Low Dose Images", ImageType DERIVED, references to the
source images.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from pathlib import Path

import numpy as np

from ldct_monai.config import BodyPart
from ldct_monai.errors import InputError

log = logging.getLogger(__name__)

# BodyPartExamined values mapped to a dose protocol (anything else: abdomen, with a warning).
_BODY_PART_OF_TAG = {
    "CHEST": BodyPart.CHEST, "THORAX": BodyPart.CHEST, "LUNG": BodyPart.CHEST,
    "ABDOMEN": BodyPart.ABDOMEN, "LIVER": BodyPart.ABDOMEN, "PELVIS": BodyPart.ABDOMEN,
    "ABDOMENPELVIS": BodyPart.ABDOMEN,
    "HEAD": BodyPart.HEAD, "BRAIN": BodyPart.HEAD, "SKULL": BodyPart.HEAD,
}
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


def read_ct_series(series_dir: Path) -> list:
    """Read one CT series under ``series_dir`` and check what the simulator needs beyond a valid series.

    Finding, validating, sorting along the normal and decoding (stored values, HU, outside-field-of-view
    mask) is ``ldct_monai.dicom.reader``'s job, shared with ``denoise``; this adds the simulator's own
    needs: 16-bit single-sample pixels and square pixel spacing.

    Returns:
        The decoded slices (:class:`ldct_monai.dicom.reader.CTSlice`) in geometric order.

    Raises:
        InputError: not a folder, no or several CT series, inconsistent slices, or pixels the simulator
            cannot use (every problem found is listed in one message).
    """
    from ldct_monai.dicom.reader import read_series

    series_dir = Path(series_dir)
    if not series_dir.is_dir():
        found = "a file" if series_dir.exists() else "no such folder"
        raise InputError(f"{series_dir}: expected a folder holding one DICOM CT series, found {found}.")
    decoded = list(read_series(series_dir).iter_slices())
    problems = []
    for sl in decoded:
        ds, name = sl.dataset, sl.ref.path.name
        if int(ds.BitsAllocated) != 16 or int(getattr(ds, "SamplesPerPixel", 1)) != 1:
            problems.append(f"{name} has BitsAllocated {ds.BitsAllocated} / SamplesPerPixel "
                            f"{getattr(ds, 'SamplesPerPixel', 1)} (expected 16 / 1)")
        ps = ds.PixelSpacing
        if not math.isclose(float(ps[0]), float(ps[1]), rel_tol=1e-3):
            problems.append(f"{name} has anisotropic PixelSpacing {list(ps)} (expected square pixels)")
    if problems:
        raise InputError(f"{series_dir}: cannot simulate low dose: " + "; ".join(sorted(set(problems))[:8]) + ".")
    return decoded


def simulate_low_dose_series(
    series_dir: Path,
    out_dir: Path,
    *,
    dose_fraction: float | None = None,
    body_part: str | None = None,
    kernel: str = "smooth",
    seed: int = 0,
    n_views: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write a simulated low-dose copy of the full-dose CT series in ``series_dir`` to ``out_dir``.

    Args:
        series_dir: folder with the slices of one full-dose CT series (never modified).
        out_dir: new folder for the low-dose series (same file names as the source).
        dose_fraction: dose of the low-dose series relative to the source; default from the body part
            (C 0.10, L/N 0.25).
        body_part: C, L or N, choosing the calibrated flux; default from BodyPartExamined (else L).
        kernel: ``smooth`` or ``sharp``: noise texture of the inserted noise.
        seed: noise seed (same seed, same files).
        n_views: projections over 180 degrees; default the image size (fewer is faster, same noise level).
        overwrite: replace an existing non-empty ``out_dir``.
        progress: show a progress bar.

    Returns:
        Summary: ``out_dir``, ``files``, ``series_uid``, ``body_part``, ``dose_fraction``,
        ``noise_std_hu`` (std of LD - FD in soft tissue, 0..100 HU, eroded), ``seconds``.

    Raises:
        InputError: unreadable or unsupported series, bad options.
    """
    import torch
    import torch.nn.functional as F
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.uid import ExplicitVRLittleEndian

    from ldct_monai.dicom.create import make_uid
    from ldct_monai.io_utils import atomic_output_dir
    from ldct_monai.progress import make_progress
    from ldct_monai.synth.noise import PROTOCOLS
    from ldct_monai.synth.projector import KERNELS, clear_cache
    from ldct_monai.synth.simulate import insert_noise

    t0 = time.perf_counter()
    if kernel not in KERNELS:
        raise InputError(f"kernel must be one of {sorted(KERNELS)}, found {kernel!r}.")
    if dose_fraction is not None and not 0 < dose_fraction <= 1:
        raise InputError(f"dose fraction must be in (0, 1], found {dose_fraction}.")
    src, dst = Path(series_dir).resolve(), Path(out_dir).resolve()
    if dst == src or dst in src.parents or src in dst.parents:
        raise InputError(f"{out_dir}: the output folder must not be, contain or lie inside the source series folder.")
    decoded = read_ct_series(series_dir)
    slices = [sl.dataset for sl in decoded]
    bp = _body_part(slices[0], body_part, series_dir)
    protocol = PROTOCOLS[bp]
    fraction = float(dose_fraction) if dose_fraction is not None else protocol.dose_fraction
    rows, cols = int(slices[0].Rows), int(slices[0].Columns)
    n = max(rows, cols)
    spacing = float(slices[0].PixelSpacing[0])
    thickness = _thickness(slices)

    stored = [sl.stored for sl in decoded]
    hu_vol = np.stack([sl.hu for sl in decoded])
    pad_vol = np.stack([np.zeros(sl.stored.shape, bool) if sl.padding is None else sl.padding for sl in decoded])
    # the scanner saw air where the image is padding (outside its field of view)
    scan_vol = np.where(pad_vol, -1000.0, hu_vol).astype(np.float32)
    r0, c0 = (n - rows) // 2, (n - cols) // 2
    square = np.full((len(slices), n, n), -1000.0, np.float32)
    square[:, r0 : r0 + rows, c0 : c0 + cols] = scan_vol

    gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, 4242]).integers(0, 2**62)))
    noise = np.empty_like(square)
    chunk = 8
    with make_progress(disable=not progress) as bar, torch.inference_mode():
        task = bar.add_task("low-dose noise", total=len(slices), unit="slices")
        for k in range(0, len(slices), chunk):
            part = torch.from_numpy(square[k : k + chunk])
            noise[k : k + chunk] = insert_noise(part, spacing, thickness, protocol, fraction=fraction, kernel=kernel,
                                                generator=gen, n_views=n_views).numpy()
            bar.advance(task, part.shape[0])
    clear_cache()
    noise = noise[:, r0 : r0 + rows, c0 : c0 + cols]
    low = hu_vol + np.where(pad_vol, 0.0, noise)

    soft = torch.from_numpy(((scan_vol > 0) & (scan_vol < 100)).astype(np.float32))[:, None]
    mask = ((-F.max_pool2d(-soft, 7, 1, 3))[:, 0] > 0.5).numpy()
    noise_std = float(noise[mask].std()) if mask.any() else float("nan")

    series_uid = make_uid(seed, str(slices[0].SeriesInstanceUID), "low-dose", fraction, kernel)
    # never below the darkest real pixel or -1024 HU, so noise cannot turn air into padding
    floor_hu = min(float(hu_vol[~pad_vol].min()) if (~pad_vol).any() else -1024.0, -1024.0)
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir, overwrite) as tmp:
        for ds, s, ld, pm in zip(slices, stored, low, pad_vol):
            new = copy.deepcopy(ds)
            slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
            intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
            signed = int(ds.PixelRepresentation) == 1
            bits = int(getattr(ds, "BitsStored", 16) or 16)
            lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
            values = np.rint((np.maximum(ld, floor_hu) - intercept) / slope)
            values = np.clip(values, lo, hi)
            pad_value = getattr(ds, "PixelPaddingValue", None)
            if pad_value is not None:  # a real pixel must not turn into padding
                values = np.where(values == int(pad_value), int(pad_value) + (1 if int(pad_value) < hi else -1), values)
            values = np.where(pm, s, values).astype(np.int16 if signed else np.uint16)
            sop_uid = make_uid(seed, str(ds.SOPInstanceUID), "low-dose", fraction, kernel)
            new.SOPInstanceUID = sop_uid
            new.file_meta.MediaStorageSOPInstanceUID = sop_uid
            if str(new.file_meta.TransferSyntaxUID) not in _UNCOMPRESSED:
                new.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
            new.SeriesInstanceUID = series_uid
            new.SeriesDescription = "Low Dose Images"
            if "SeriesNumber" in ds and ds.SeriesNumber is not None:
                new.SeriesNumber = min(int(ds.SeriesNumber) + 1000, 2**31 - 1)
            image_type = list(getattr(ds, "ImageType", []) or [])
            new.ImageType = ["DERIVED", "SECONDARY", *image_type[2:]]
            new.DerivationDescription = (
                f"Simulated {fraction:g} dose fraction by projection-domain noise insertion (Yu et al. 2012, "
                f"ldct-monai, kernel {kernel})"
            )[:1024]
            ref = Dataset()
            ref.ReferencedSOPClassUID = ds.SOPClassUID
            ref.ReferencedSOPInstanceUID = ds.SOPInstanceUID
            new.SourceImageSequence = Sequence([ref])
            for key in ("XRayTubeCurrent", "Exposure"):
                if getattr(ds, key, None) not in (None, ""):
                    setattr(new, key, int(round(float(getattr(ds, key)) * fraction)))
            if getattr(ds, "CTDIvol", None) not in (None, ""):
                new.CTDIvol = float(ds.CTDIvol) * fraction
            for key in ("SmallestImagePixelValue", "LargestImagePixelValue"):
                if key in new:
                    del new[key]
            new.PixelData = values.tobytes()
            new.save_as(tmp / Path(ds.filename).name, enforce_file_format=True)
    return {
        "out_dir": str(out_dir),
        "files": len(slices),
        "series_uid": series_uid,
        "body_part": bp.value,
        "dose_fraction": fraction,
        "kernel": kernel,
        "noise_std_hu": round(noise_std, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _body_part(ds, option: str | None, series_dir: Path) -> BodyPart:
    if option is not None:
        try:
            return BodyPart(option.upper())
        except ValueError as err:
            raise InputError(f"body part must be C, L or N, found {option!r}.") from err
    tag = str(getattr(ds, "BodyPartExamined", "") or "").upper().replace(" ", "")
    if tag in _BODY_PART_OF_TAG:
        return _BODY_PART_OF_TAG[tag]
    log.warning("%s: BodyPartExamined %r not recognised; using the abdomen dose protocol (--body-part to choose).",
                series_dir, tag)
    return BodyPart.ABDOMEN


def _thickness(slices: list) -> float:
    """SliceThickness of the series (mm); the slice spacing when absent; 1 mm as a last resort."""
    from ldct_monai.dicom.core import slice_position

    t = getattr(slices[0], "SliceThickness", None)
    if t not in (None, "") and float(t) > 0:
        return float(t)
    if len(slices) > 1:
        return abs(slice_position(slices[1]) - slice_position(slices[0])) or 1.0
    return 1.0
