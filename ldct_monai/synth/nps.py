"""Noise of a real CT series, measured from its own pixels: level and noise power spectrum (NPS).

The simulator calibrates itself on the series it reads (for filtered back-projection the noise a dose
reduction adds has the NPS *shape* of the full-dose image's own noise, and its variance is
``sigma_FD^2 (1/f - 1)``), and checks itself the same way. Both the full-dose noise and the inserted
noise are measured here with one estimator, the physicist's flat-ROI method (ICRU report 87, AAPM TG-233):

- candidate ROIs of :data:`ROI_PX` x :data:`ROI_PX` pixels on a grid (stride :data:`ROI_STRIDE_PX`),
  kept when the whole ROI lies in soft tissue or fat of a smoothed copy (:data:`TISSUE_HU`) and in the
  field of view;
- each ROI is detrended by its least-squares quadratic surface (organ gradients and cupping are not noise);
- the least structured :data:`QUIET_SHARE` of the ROIs are kept, ranked by the std of a smoothed copy
  (ROIs over vessels, organ edges or fat/muscle borders rank high); their std is the noise level and
  their mean periodogram the 2-D NPS, reduced to a radial profile in cycles/pixel.

On the real series in ``docs/simulator.md`` this agrees with the neighbouring-slice estimate (half the
difference of adjacent 1 mm slices at the same ROIs) within 8 % in std and 7 % in NPS peak. The inserted
noise is measured with the same estimator at the same ROIs, so a check compares like with like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

ROI_PX = 32  # ROI side: 0.031 cycles/pixel frequency resolution, still fits in a liver or the mediastinum
ROI_STRIDE_PX = 16  # half-overlapping ROIs
TISSUE_HU = (-150.0, 200.0)  # fat, soft tissue, organs, brain (not lung, not bone) on a smoothed copy
SMOOTH_SIGMA_PX = 3.0  # smoothing before the tissue test, so noise does not punch holes into the mask
STRUCTURE_SIGMA_PX = 4.0  # smoothing that keeps anatomy and removes most noise, to rank ROIs by structure
QUIET_SHARE = 0.10  # share of the least structured ROIs kept (the rest sit on anatomy)
MIN_ROIS = 12  # fewer flat ROIs in a whole series: the measured NPS is not trusted (kernel prior instead)
RAMP_CAP_FREQ = 0.07  # cycles/pixel: below it the NPS is capped by the FBP ramp (see ramp_cap)
N_BINS = 16  # radial bins from 0 to 0.5 cycles/pixel (one per frequency step of a 32-pixel ROI)


@dataclass(frozen=True)
class NoiseMeasurement:
    """Noise of a set of slices measured in flat ROIs.

    Attributes:
        std_hu: noise standard deviation in HU (RMS over the kept ROIs); NaN without ROIs.
        freq: (N_BINS,) radial bin centres, cycles/pixel.
        nps: (N_BINS,) radial NPS, HU^2 pixel^2 (integral over the 2-D frequency plane = variance).
        n_rois: ROIs kept.
        per_slice_std: (slices,) std of each slice's kept ROIs (NaN for a slice without any).
    """

    std_hu: float
    freq: np.ndarray
    nps: np.ndarray
    n_rois: int
    per_slice_std: np.ndarray

    @property
    def peak_frequency(self) -> float:
        """Frequency (cycles/pixel) of the NPS maximum (:func:`peak_frequency`)."""
        return peak_frequency(self.freq, self.nps)

    @property
    def half_power_frequency(self) -> float:
        """Frequency (cycles/pixel) below which half of the noise power lies (2-D integral)."""
        return half_power_frequency(self.freq, self.nps)


def roi_grid(shape: tuple[int, int]) -> list[tuple[int, int]]:
    """Top-left corners of the candidate ROIs of a slice."""
    rows, cols = shape
    return [(r, c) for r in range(0, rows - ROI_PX + 1, ROI_STRIDE_PX) for c in range(0, cols - ROI_PX + 1, ROI_STRIDE_PX)]


def flat_rois(hu: np.ndarray, valid: np.ndarray | None = None) -> list[tuple[int, int]]:
    """ROIs (top-left corners) lying wholly in soft tissue / fat of one slice, ``valid`` pixels only."""
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(np.asarray(hu, np.float32), SMOOTH_SIGMA_PX)
    ok = (smooth >= TISSUE_HU[0]) & (smooth <= TISSUE_HU[1])
    if valid is not None:
        ok &= valid
    # integral image: an ROI is flat when every pixel in it passes
    integral = np.pad(ok.astype(np.int32).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    out = []
    for r, c in roi_grid(ok.shape):
        total = integral[r + ROI_PX, c + ROI_PX] - integral[r, c + ROI_PX] - integral[r + ROI_PX, c] + integral[r, c]
        if total == ROI_PX * ROI_PX:
            out.append((r, c))
    return out


def _quadratic_basis() -> np.ndarray:
    y, x = np.mgrid[0:ROI_PX, 0:ROI_PX].astype(np.float64)
    x, y = (x - x.mean()) / ROI_PX, (y - y.mean()) / ROI_PX
    basis = np.stack([np.ones_like(x), x, y, x * x, x * y, y * y]).reshape(6, -1).T
    q, _ = np.linalg.qr(basis)
    return q  # orthonormal columns: the residual is a projection


_BASIS = _quadratic_basis()


def detrended_rois(image: np.ndarray, corners: list[tuple[int, int]]) -> np.ndarray:
    """(k, ROI_PX, ROI_PX) ROIs of ``image`` with their least-squares quadratic surface removed."""
    if not corners:
        return np.zeros((0, ROI_PX, ROI_PX))
    stack = np.stack([np.asarray(image[r : r + ROI_PX, c : c + ROI_PX], np.float64) for r, c in corners])
    flat = stack.reshape(len(corners), -1)
    flat = flat - (flat @ _BASIS) @ _BASIS.T
    return flat.reshape(stack.shape)


def roi_variance(rois: np.ndarray) -> np.ndarray:
    """Variance of each detrended ROI, corrected for the 6 fitted parameters."""
    n = ROI_PX * ROI_PX
    return (rois**2).reshape(len(rois), n).sum(1) / (n - _BASIS.shape[1])  # n, not -1: no ROIs gives an empty array


def radial_nps(rois: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean periodogram of detrended ROIs, radially averaged: (bin centres in cycles/pixel, NPS).

    Normalised so that summing the 2-D NPS over the frequency plane (cell area 1 / ROI_PX^2) gives the
    variance: ``NPS(u, v) = |DFT|^2 / ROI_PX^2`` in HU^2 pixel^2.
    """
    spec = (np.abs(np.fft.fft2(rois)) ** 2).mean(0) / (ROI_PX * ROI_PX)
    f = np.fft.fftfreq(ROI_PX)
    fr = np.hypot(f[:, None], f[None, :])
    edges = np.linspace(0.0, 0.5, N_BINS + 1)
    idx = np.clip(np.digitize(fr, edges) - 1, 0, N_BINS - 1)
    keep = fr <= 0.5
    sums = np.bincount(idx[keep], weights=spec[keep], minlength=N_BINS)
    counts = np.bincount(idx[keep], minlength=N_BINS)
    centres = 0.5 * (edges[1:] + edges[:-1])
    return centres, sums / np.maximum(counts, 1)


def select_rois(images: list[np.ndarray], valid: list[np.ndarray | None] | None = None) -> list[list[tuple[int, int]]]:
    """Flat ROIs of a set of full-dose slices: in tissue, and the least structured :data:`QUIET_SHARE` of them.

    Structure is the detrended std of a copy smoothed at :data:`STRUCTURE_SIGMA_PX` (anatomy survives the
    smoothing, most of the noise does not), pooled over all slices; choosing by structure rather than by
    the raw std does not favour ROIs whose noise happens to be low.

    Returns:
        Top-left corners of the chosen ROIs, per slice (possibly empty for some slices).
    """
    from scipy.ndimage import gaussian_filter

    valid = valid if valid is not None else [None] * len(images)
    corners = [flat_rois(im, v) for im, v in zip(images, valid)]
    structure = [
        np.sqrt(roi_variance(detrended_rois(gaussian_filter(np.asarray(im, np.float32), STRUCTURE_SIGMA_PX), c)))
        for im, c in zip(images, corners)
    ]
    pooled = np.concatenate(structure) if structure else np.zeros(0)
    if pooled.size == 0:
        return [[] for _ in images]
    k = min(pooled.size, max(MIN_ROIS, int(math.ceil(QUIET_SHARE * pooled.size))))
    threshold = np.sort(pooled)[k - 1]
    return [[c for c, s in zip(cs, st) if s <= threshold] for cs, st in zip(corners, structure)]


def measure(images: list[np.ndarray] | np.ndarray, corners: list[list[tuple[int, int]]]) -> NoiseMeasurement:
    """Noise level and radial NPS of ``images`` over the given ROIs (:func:`select_rois` of the full dose).

    Args:
        images: slices (HU): the full-dose image, or a noise image measured at the full dose's ROIs.
        corners: ROIs of each slice.
    """
    chosen, per_slice = [], []
    for image, cs in zip(images, corners):
        rois = detrended_rois(image, cs)
        per_slice.append(float(np.sqrt(roi_variance(rois).mean())) if len(cs) else float("nan"))
        if len(cs):
            chosen.append(rois)
    edges = np.linspace(0.0, 0.5, N_BINS + 1)
    if not chosen:
        return NoiseMeasurement(float("nan"), 0.5 * (edges[1:] + edges[:-1]), np.full(N_BINS, np.nan), 0,
                                np.array(per_slice))
    allr = np.concatenate(chosen)
    freq, spectrum = radial_nps(allr)
    spectrum = ramp_cap(freq, spectrum)
    std = float(np.sqrt(roi_variance(allr).mean()))
    return NoiseMeasurement(std, freq, spectrum, int(len(allr)), np.array(per_slice))


def ramp_cap(freq: np.ndarray, spectrum: np.ndarray) -> np.ndarray:
    """Cap the NPS below :data:`RAMP_CAP_FREQ` by the FBP ramp through its value there.

    FBP noise power falls linearly to zero at zero frequency; what a quadratic detrend leaves of
    anatomy (organ texture, partial-volume borders) lives in the lowest bins and would otherwise be
    taken for noise.
    """
    ref = int(np.searchsorted(freq, RAMP_CAP_FREQ))
    if ref >= len(freq) or not np.isfinite(spectrum[ref]):
        return spectrum
    out = spectrum.copy()
    out[:ref] = np.minimum(out[:ref], spectrum[ref] * freq[:ref] / freq[ref])
    return out


def peak_frequency(freq: np.ndarray, nps: np.ndarray) -> float:
    """Frequency of the NPS maximum: the power-weighted centre of the bins within 15 % of the maximum.

    Spectra are smoothed over three bins first; a sharp kernel's NPS is a broad plateau, on which the
    single largest bin would jump with the noise of the estimate.
    """
    if not np.isfinite(nps).any():
        return float("nan")
    s = np.convolve(np.nan_to_num(nps), np.ones(3) / 3, mode="same")
    s[0] = s[-1] = 0.0  # edge bins are averaged with zero padding
    top = s >= 0.85 * s.max()
    return float(np.sum(freq[top] * s[top]) / np.sum(s[top]))


def half_power_frequency(freq: np.ndarray, nps: np.ndarray) -> float:
    """Radius (cycles/pixel) of the disc that holds half of the 2-D noise power (linear interpolation)."""
    if not np.isfinite(nps).all() or nps.sum() <= 0:
        return float("nan")
    step = freq[1] - freq[0]
    power = nps * 2 * math.pi * freq * step  # annulus power
    cum = np.concatenate([[0.0], np.cumsum(power)])
    edges = np.concatenate([[freq[0] - step / 2], freq + step / 2])
    target = 0.5 * cum[-1]
    j = int(np.searchsorted(cum, target))
    j = min(max(j, 1), len(cum) - 1)
    frac = (target - cum[j - 1]) / max(cum[j] - cum[j - 1], 1e-30)
    return float(edges[j - 1] + frac * (edges[j] - edges[j - 1]))
