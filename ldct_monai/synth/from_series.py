"""Simulated low-dose series for a real full-dose CT series, kernel- and dose-true.

The series' own image is forward-projected into a sinogram that stands in for the measured full-dose
projections; Yu et al. (2012, the method behind the Mayo / TCIA low-dose data) noise for the requested
dose fraction is inserted there and reconstructed with an FBP window whose noise power spectrum is the
one measured on the series itself (:mod:`ldct_monai.synth.nps`), at a level set by the FBP law
``sigma_LD-FD = sigma_FD sqrt(1/f - 1)``, and added to the original pixels. So the texture follows the
scanner's kernel, pixel spacing and slice thickness without raw data. The low-dose series is a derived
copy of the source: same patient, study, frame of reference, geometry and pixel encoding; new
Series/SOP Instance UIDs, SeriesDescription "Low Dose Images", ImageType DERIVED, references to the
source images. Memory is bounded: slices are read, simulated and written :data:`CHUNK` at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ldct_monai.errors import InputError
from ldct_monai.schema import BodyPart, parse_body_part

log = logging.getLogger(__name__)



CALIBRATION_SLICES = 12  # at most this many slices (spread over the series) calibrate texture and level ...
MIN_CALIBRATION_SLICES = 3  # ... at least this many, else a quarter of the series (calibration costs time)
CHUNK = 8  # slices simulated together (memory: a few x CHUNK x n^2 x views floats)
WINDOW_SAMPLES = 129  # samples of the measured kernel window on [0, 1] x Nyquist


@dataclass
class _Texture:
    """Noise texture of the insertion: an FBP window and where it came from."""

    window: torch.Tensor | str  # sampled window (measured or kernel prior) or a named simulator kernel
    source: str  # "measured", "kernel prior (<class>)", or the simulator kernel's name


def simulate_low_dose_series(
    series_dir: Path,
    out_dir: Path,
    *,
    dose_fraction: float | None = None,
    body_part: str | None = None,
    kernel: str = "auto",
    electronic_noise: float | None = None,
    seed: int = 0,
    n_views: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write a simulated low-dose copy of the full-dose CT series in ``series_dir`` to ``out_dir``.

    The simulation calibrates itself on the series (see the module docstring of
    :mod:`ldct_monai.synth.nps` for the estimator):

    1. the full-dose noise level ``sigma_FD`` and its NPS are measured in flat ROIs of
       :data:`CALIBRATION_SLICES` slices spread over the series;
    2. projection-domain noise for dose fraction ``f`` (Yu et al. 2012) is reconstructed with an FBP
       window whose noise has that NPS (``kernel="auto"``; the window is corrected once by the ratio of
       the target to the realised NPS), so the texture follows the scanner's kernel, pixel spacing and
       slice thickness;
    3. the flux is scaled so that the inserted noise has std ``sigma_FD * sqrt(1/f - 1)`` at the same
       ROIs (for FBP the added variance is ``sigma_FD^2 (1/f - 1)``); optional electronic noise (Zabic
       et al. 2013) is added on top at that flux, so it raises the noise of photon-starved rays only.

    A series with too little flat tissue to measure (fewer than ``nps.MIN_ROIS`` ROIs) gets the texture
    of its kernel class (:mod:`ldct_monai.synth.kernels`) and, without any ROI, the body part's
    calibrated protocol flux. Iterative reconstructions (iDose, ASiR, SAFIRE, ...) are detected and
    reported: the inserted noise then has the full-dose IR texture with FBP dose scaling, while real
    low-dose IR noise is somewhat lower and blotchier (IR denoising depends on the dose).

    Args:
        series_dir: folder with the slices of one full-dose CT series (never modified).
        out_dir: new folder for the low-dose series (same file names as the source).
        dose_fraction: dose of the low-dose series relative to the source; default from the body part
            (C 0.10, L/N 0.25).
        body_part: C, L or N, choosing the dose protocol; default from BodyPartExamined (else L).
        kernel: ``auto`` (texture measured on the series), or ``smooth`` / ``sharp`` (the simulator's
            own kernels, whatever the series' texture).
        electronic_noise: electronic noise std in photons per ray at the reference sampling
            (``synth.noise``; the phantom trees use 2.5). Default 0 (off): the series' own full-dose
            noise already holds the scanner's electronic noise at full dose, and its low-dose share
            depends on a detector that cannot be calibrated from images (at 2.5 it adds 37 % to the
            inserted std of a 25 % LIDC chest slab, far beyond the FBP law the Mayo data follow).
        seed: noise seed (same seed, same files).
        n_views: projections over 180 degrees; default the image size (fewer is faster, same noise level).
        overwrite: replace an existing non-empty ``out_dir``.
        progress: show a progress bar.

    Returns:
        Summary: ``out_dir``, ``files``, ``series_uid``, ``body_part``, ``dose_fraction``, ``kernel``
        (ConvolutionKernel), ``kernel_class``, ``iterative``, ``texture``, ``noise_std_hu`` (std of
        LD - FD in soft tissue, 0..100 HU, eroded), ``check`` (full-dose and inserted noise at the
        calibration ROIs: std, NPS peak and half-power frequency, target std, radial NPS curves),
        ``seconds``.

    Raises:
        InputError: unreadable or unsupported series, bad options.
    """
    from ldct_monai.dicom.create import make_uid
    from ldct_monai.dicom.reader import read_series
    from ldct_monai.io_utils import atomic_output_dir
    from ldct_monai.progress import make_progress
    from ldct_monai.synth import nps
    from ldct_monai.synth.kernels import classify_kernel
    from ldct_monai.synth.noise import PROTOCOLS
    from ldct_monai.synth.projector import KERNELS, clear_cache

    t0 = time.perf_counter()
    if kernel != "auto" and kernel not in KERNELS:
        raise InputError(f"kernel must be auto or one of {sorted(KERNELS)}, found {kernel!r}.")
    if dose_fraction is not None and not 0 < dose_fraction <= 1:
        raise InputError(f"dose fraction must be in (0, 1], found {dose_fraction}.")
    if electronic_noise is not None and electronic_noise < 0:
        raise InputError(f"electronic noise must be >= 0 photons, found {electronic_noise}.")
    src, dst = Path(series_dir).resolve(), Path(out_dir).resolve()
    if dst == src or dst in src.parents or src in dst.parents:
        raise InputError(f"{out_dir}: the output folder must not be, contain or lie inside the source series folder.")
    series = _open_series(series_dir, read_series)
    n_slices = len(series)
    first = series.read_slice(0)
    _check_slices(series_dir, [first])
    ds0 = first.dataset
    bp = _body_part(ds0, body_part, series_dir)
    protocol = PROTOCOLS[bp]
    protocol = dataclasses.replace(protocol, electronic_noise=float(electronic_noise or 0.0))
    fraction = float(dose_fraction) if dose_fraction is not None else protocol.dose_fraction
    spacing = float(ds0.PixelSpacing[0])
    thickness = _thickness([series.read_slice(i).dataset for i in range(min(2, n_slices))])
    info = classify_kernel(ds0)
    if info.iterative:
        log.warning("%s: iterative reconstruction (%s) detected: the inserted noise has the full-dose %s texture "
                    "with FBP dose scaling; real low-dose %s noise is somewhat lower and blotchier.",
                    series_dir, info.iterative, info.iterative, info.iterative)

    gen = torch.Generator().manual_seed(int(np.random.default_rng([seed, 4242]).integers(0, 2**62)))
    n_calib = min(n_slices, max(MIN_CALIBRATION_SLICES, min(CALIBRATION_SLICES, n_slices // 4)))
    calib_idx = sorted({int(i) for i in np.linspace(0, n_slices - 1, n_calib).round()})
    calib = [series.read_slice(i) for i in calib_idx]
    _check_slices(series_dir, calib)
    calib_hu = [_scan_image(sl) for sl in calib]
    rois = nps.select_rois(calib_hu, [None if sl.padding is None else ~sl.padding for sl in calib])
    fd = nps.measure(calib_hu, rois)
    target = fd.std_hu * math.sqrt(1.0 / fraction - 1.0) if fd.n_rois else float("nan")

    sim = _Simulator(spacing, thickness, protocol, fraction, n_views, gen)
    texture = _texture(kernel, fd, info, spacing)
    flux = 1.0
    if fd.n_rois:
        # quantum noise alone at the protocol's flux, reconstructed with the texture's window
        geom, sino, crop = sim.noise_sinogram(calib_hu, electronic=False)
        realised = nps.measure(sim.reconstruct(sino, geom, texture.window, crop), rois)
        if texture.source == "measured":  # one correction by the ratio of target to realised NPS
            texture = _Texture(_corrected_window(texture.window, fd, realised), "measured")
            realised = nps.measure(sim.reconstruct(sino, geom, texture.window, crop), rois)
        flux = (realised.std_hu / target) ** 2  # quantum noise std scales as 1 / sqrt(flux)
    else:
        log.warning("%s: no flat soft tissue to measure the noise on; using the %s protocol's flux.", series_dir, bp.value)

    series_uid = make_uid(seed, str(ds0.SeriesInstanceUID), "low-dose", fraction, kernel)
    out_dir = Path(out_dir)
    soft_sum = soft_sq = 0.0
    soft_n = 0
    check_noise: dict[int, np.ndarray] = {}
    with atomic_output_dir(out_dir, overwrite) as tmp, make_progress(disable=not progress) as bar:
        task = bar.add_task("low-dose noise", total=n_slices, unit="slices")
        for k in range(0, n_slices, CHUNK):
            chunk = [series.read_slice(i) for i in range(k, min(k + CHUNK, n_slices))]
            _check_slices(series_dir, chunk)
            hu = [_scan_image(sl) for sl in chunk]
            noise = sim.low_dose_noise(hu, texture.window, flux)
            for j, (sl, img, nz) in enumerate(zip(chunk, hu, noise)):
                if k + j in calib_idx:
                    check_noise[k + j] = nz
                soft = _soft_tissue(img)
                soft_sum, soft_sq, soft_n = soft_sum + float(nz[soft].sum()), soft_sq + float((nz[soft] ** 2).sum()), soft_n + int(soft.sum())
                _write_low_dose_slice(sl, nz, tmp, seed=seed, fraction=fraction, kernel=kernel, series_uid=series_uid,
                                      make_uid=make_uid, texture=texture.source, info=info)
            bar.advance(task, len(chunk))
    clear_cache()
    inserted = nps.measure([check_noise[i] for i in calib_idx], rois)
    noise_std = math.sqrt(max(soft_sq / soft_n - (soft_sum / soft_n) ** 2, 0.0)) if soft_n else float("nan")
    return {
        "out_dir": str(out_dir),
        "files": n_slices,
        "series_uid": series_uid,
        "body_part": bp.value,
        "dose_fraction": fraction,
        "kernel": info.name,
        "kernel_class": info.kernel_class,
        "iterative": info.iterative,
        "texture": texture.source,
        "noise_std_hu": round(noise_std, 2),
        "check": {
            "rois": fd.n_rois,
            "flux_scale": flux,
            "fd_std_hu": fd.std_hu,
            "target_std_hu": target,
            "inserted_std_hu": inserted.std_hu,
            "fd_peak": fd.peak_frequency,
            "fd_half_power": fd.half_power_frequency,
            "inserted_peak": inserted.peak_frequency,
            "inserted_half_power": inserted.half_power_frequency,
            "freq": fd.freq.tolist(),
            "fd_nps": fd.nps.tolist(),
            "inserted_nps": inserted.nps.tolist(),
        },
        "seconds": round(time.perf_counter() - t0, 2),
    }


class _Simulator:
    """Projection-domain noise for slices of one series (square padding, FOV, flux and electronic noise)."""

    def __init__(self, spacing: float, thickness: float, protocol, fraction: float, n_views: int | None,
                 generator: torch.Generator) -> None:
        self.spacing, self.thickness, self.protocol, self.fraction = spacing, thickness, protocol, fraction
        self.n_views, self.generator = n_views, generator

    def _sinogram(self, hu: list[np.ndarray]):
        from ldct_monai.synth.projector import ParallelGeometry, forward_project
        from ldct_monai.synth.simulate import effective_flux, hu_to_mu

        rows, cols = hu[0].shape
        n = max(rows, cols)
        square = np.full((len(hu), n, n), -1000.0, np.float32)
        r0, c0 = (n - rows) // 2, (n - cols) // 2
        square[:, r0 : r0 + rows, c0 : c0 + cols] = np.stack(hu)
        geom = ParallelGeometry.for_image(n, self.spacing, self.n_views)
        with torch.inference_mode():
            p = forward_project(hu_to_mu(torch.from_numpy(square)) * geom.fov_mask(), geom)
            i0, sigma_e, _, _ = effective_flux(geom, self.thickness, self.protocol, p)
        return geom, p, i0, sigma_e, (r0, c0, rows, cols)

    def reconstruct(self, sino: torch.Tensor, geom, window, crop) -> list[np.ndarray]:
        from ldct_monai.synth.noise import MU_WATER
        from ldct_monai.synth.projector import fbp

        r0, c0, rows, cols = crop
        with torch.inference_mode():
            img = (fbp(sino, geom, window) * (1000.0 / MU_WATER)).numpy()
        return [im[r0 : r0 + rows, c0 : c0 + cols] for im in img]

    def noise_sinogram(self, hu: list[np.ndarray], flux: float = 1.0, electronic: bool = True):
        """Yu et al. (2012) projection noise at ``flux`` x the protocol's flux: (geometry, sinogram, crop)."""
        from ldct_monai.synth.noise import low_dose_noise

        geom, p, i0, sigma_e, crop = self._sinogram(hu)
        with torch.inference_mode():
            sino = low_dose_noise(p, i0 * flux, sigma_e if electronic else 0.0, self.fraction, self.generator)
        return geom, sino, crop

    def low_dose_noise(self, hu: list[np.ndarray], window, flux: float) -> list[np.ndarray]:
        """Inserted noise (HU) at ``flux`` x the protocol's flux, electronic noise included."""
        geom, sino, crop = self.noise_sinogram(hu, flux)
        return self.reconstruct(sino, geom, window, crop)


def _texture(kernel: str, fd, info, spacing: float) -> _Texture:
    """FBP window of the inserted noise: a named kernel, the measured NPS, or the kernel class's prior."""
    from ldct_monai.synth import nps
    from ldct_monai.synth.kernels import prior_nps

    if kernel != "auto":
        return _Texture(kernel, kernel)
    if fd.n_rois >= nps.MIN_ROIS:
        shape, source = fd.nps, "measured"
    else:
        shape, source = prior_nps(fd.freq, info.prior_peak(spacing)), f"kernel prior ({info.kernel_class})"
    return _Texture(_window_for(fd.freq, shape), source)


def _window_for(freq: np.ndarray, shape: np.ndarray) -> torch.Tensor:
    """FBP window whose reconstructed white projection noise has radial NPS ``shape`` (NPS ~ f W(f)^2)."""
    frac = np.linspace(0.0, 1.0, WINDOW_SAMPLES)
    f = frac * 0.5  # cycles/pixel (detector bin = pixel)
    s = np.interp(f, freq, np.nan_to_num(np.maximum(shape, 0.0)))
    w = np.sqrt(s / np.maximum(f, freq[0]))
    return torch.from_numpy(w / max(w.max(), 1e-30))


def _corrected_window(window: torch.Tensor, target, realised) -> torch.Tensor:
    """``window`` times sqrt(target / realised NPS), both normalised to unit power (one fixed-point step)."""
    t = np.nan_to_num(target.nps) / max(np.nansum(target.nps), 1e-30)
    r = np.nan_to_num(realised.nps) / max(np.nansum(realised.nps), 1e-30)
    eps = 1e-3 * max(t.max(), r.max())
    ratio = np.clip((t + eps) / (r + eps), 0.25, 4.0)
    f = np.linspace(0.0, 1.0, window.numel()) * 0.5
    w = window.numpy() * np.sqrt(np.interp(f, target.freq, ratio))
    return torch.from_numpy(w / max(w.max(), 1e-30))


def _open_series(series_dir: Path, read_series):
    series_dir = Path(series_dir)
    if not series_dir.is_dir():
        found = "a file" if series_dir.exists() else "no such folder"
        raise InputError(f"{series_dir}: expected a folder holding one DICOM CT series, found {found}.")
    return read_series(series_dir)


def _check_slices(series_dir: Path, decoded: list) -> None:
    """The simulator's own needs beyond a valid series: 16-bit single-sample pixels, square pixels."""
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


def _scan_image(sl) -> np.ndarray:
    """HU the scanner saw: air where the image is padding (outside its field of view)."""
    return np.where(sl.padding, -1000.0, sl.hu).astype(np.float32) if sl.padding is not None else sl.hu.astype(np.float32)


def _soft_tissue(hu: np.ndarray) -> np.ndarray:
    """Soft tissue (0..100 HU) eroded by 3 px: where the summary's ``noise_std_hu`` is measured."""
    from scipy.ndimage import binary_erosion

    return binary_erosion((hu > 0) & (hu < 100), iterations=3)


def _write_low_dose_slice(sl, noise: np.ndarray, folder: Path, *, seed: int, fraction: float, kernel: str,
                          series_uid: str, make_uid, texture: str, info) -> None:
    """Write one derived low-dose slice: the source's pixels plus ``noise`` (HU), padding untouched."""
    from ldct_monai.dicom.create import write_dataset
    from ldct_monai.dicom.writer import derive_twin_slice

    ds = sl.dataset
    values = encode_added_hu(sl, noise)
    ir = f", {info.iterative} source" if info.iterative else ""
    new = derive_twin_slice(
        ds, values,
        sop_instance_uid=make_uid(seed, str(ds.SOPInstanceUID), "low-dose", fraction, kernel),
        series_instance_uid=series_uid,
        series_description="Low Dose Images",
        derivation_description=(f"Simulated {fraction:g} dose fraction by projection-domain noise insertion "
                                f"(Yu et al. 2012, ldct-monai, noise texture {texture}{ir})"),
        dose_fraction=fraction,
    )
    write_dataset(new, folder / Path(ds.filename).name)


def encode_added_hu(sl, added: np.ndarray) -> np.ndarray:
    """Stored values of a decoded slice's HU plus ``added`` (HU), in the slice's own pixel representation.

    Padding pixels keep their stored values; real pixels stay at or above the darkest real pixel (or
    -1024 HU), never take the padding value, and are clipped to the stored bit range.
    """
    ds, stored, pad = sl.dataset, sl.stored, sl.padding
    hu = sl.hu.astype(np.float32)
    pm = np.zeros(stored.shape, bool) if pad is None else pad
    new = hu + np.where(pm, 0.0, added)
    # never below the darkest real pixel or -1024 HU, so noise cannot turn air into padding
    floor_hu = min(float(hu[~pm].min()) if (~pm).any() else -1024.0, -1024.0)
    slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
    intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
    signed = int(ds.PixelRepresentation) == 1
    bits = int(getattr(ds, "BitsStored", 16) or 16)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    values = np.clip(np.rint((np.maximum(new, floor_hu) - intercept) / slope), lo, hi)
    pad_value = getattr(ds, "PixelPaddingValue", None)
    if pad_value is not None:  # a real pixel must not turn into padding
        values = np.where(values == int(pad_value), int(pad_value) + (1 if int(pad_value) < hi else -1), values)
    return np.where(pm, stored, values).astype(np.int16 if signed else np.uint16)


def _body_part(ds, option: str | None, series_dir: Path) -> BodyPart:
    if option is not None:
        try:
            return BodyPart(option.upper())
        except ValueError as err:
            raise InputError(f"body part must be C, L or N, found {option!r}.") from err
    tag = str(getattr(ds, "BodyPartExamined", "") or "").upper().replace(" ", "")
    bp = parse_body_part(tag)  # the dose protocol follows the body part (PELVIS: abdomen)
    if bp is not None:
        return bp
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
