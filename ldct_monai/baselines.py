"""Classical denoisers that ``evaluate`` runs beside the model, and their tuning on unpaired data.

Baselines: a Gaussian filter (``scipy.ndimage.gaussian_filter``) and non-local means
(``skimage.restoration.denoise_nl_means``, fast mode). Both work on HU clipped to the full CT range
[-1024, 3071] (what the model sees too), so padding outside the field of view (-2000 / -3024 HU) is
not smeared into the body.

Tuning. The val split is *unpaired* (val patients give either their low-dose or their full-dose
series), so no PSNR against a reference can pick the filter strength there. The criterion is the one a
medical physicist uses to compare doses: the noise standard deviation in homogeneous soft tissue. For
each body part we measure it on the val full-dose slices (the target), then choose the smallest filter
strength whose output on the val low-dose slices has the same flat-region noise. Less smoothing would
leave more noise than full dose; more would blur structure the full-dose image keeps. This is the
same goal CycleGAN has (low-dose images that look full-dose), and it never touches the test pairs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ldct_monai.metrics import FULL_RANGE_HU

log = logging.getLogger(__name__)

BASELINES = ("gaussian", "nlm")

# Flat-region noise estimate: soft tissue on a smoothed copy, local std in windows wholly inside it.
TISSUE_HU = (-50.0, 150.0)  # water-like soft tissue (muscle, organs, brain); excludes fat, lung, bone
NOISE_WINDOW_PX = 9  # local std window; large enough for a stable std, small enough for small organs
MASK_SMOOTH_SIGMA_PX = 2.0  # smooth before thresholding so noise does not punch holes into the mask
MIN_FLAT_PIXELS = 64  # fewer flat pixels than this -> no estimate for the slice

NLM_PATCH_SIZE = 5  # px; skimage's 2-D suggestion is 5 (7 is its default, slower, similar results)
NLM_PATCH_DISTANCE = 6  # px search radius (13 x 13 search window)
GAUSSIAN_SIGMA_RANGE = (0.1, 4.0)  # px searched; 4 px already blurs a 512 px slice beyond clinical use
NLM_H_RANGE = (0.05, 3.0)  # multiples of the low-dose noise std searched; skimage suggests ~0.6-1
SCAN_POINTS = 8  # coarse log-spaced scan (neighbours ~1.7x apart) ...
REFINE_STEPS = 6  # ... then bisection: final bracket ~1.7^(1/64), under 1 %


def clip_full(hu: np.ndarray) -> np.ndarray:
    """HU clipped to the full CT range [-1024, 3071] (float32)."""
    return np.clip(np.asarray(hu, dtype=np.float32), *FULL_RANGE_HU)


def gaussian_denoise(hu: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian filter of one HU slice (reflect at the borders, kernel truncated at 4 sigma).

    Args:
        hu: (H, W) HU.
        sigma_px: standard deviation in pixels (not mm: one value per body part, spacing varies little).
    """
    from scipy.ndimage import gaussian_filter

    x = clip_full(hu)
    if sigma_px <= 0:
        return x
    return gaussian_filter(x, sigma=float(sigma_px), mode="reflect", truncate=4.0).astype(np.float32)


def nlm_denoise(hu: np.ndarray, h_hu: float) -> np.ndarray:
    """Non-local means of one HU slice (skimage, fast mode, 5 x 5 patches, 13 x 13 search window).

    Plain NLM (Buades et al. 2005): patch weights ``exp(-d^2 / h^2)`` with ``d^2`` the mean squared
    patch difference in HU^2. skimage's ``sigma`` (which subtracts ``2 sigma^2`` from ``d^2``) is left
    at 0: with it, pure-noise patches all get weight 1 whatever ``h`` is, so ``h`` no longer controls
    the smoothing and cannot be tuned to a noise level.

    Args:
        hu: (H, W) HU.
        h_hu: filter strength in HU (larger smooths more; about 1-2 x the noise std in practice).
    """
    from skimage.restoration import denoise_nl_means

    x = clip_full(hu)
    if h_hu <= 0:
        return x
    out = denoise_nl_means(
        x.astype(np.float64),
        patch_size=NLM_PATCH_SIZE,
        patch_distance=NLM_PATCH_DISTANCE,
        h=float(h_hu),
        sigma=0.0,
        fast_mode=True,
        preserve_range=True,
    )
    return np.asarray(out, dtype=np.float32)


def flat_mask(hu: np.ndarray) -> np.ndarray:
    """Centres of 9 x 9 windows lying wholly in soft tissue ([-50, 150] HU on a copy smoothed at 2 px)."""
    from scipy.ndimage import gaussian_filter, uniform_filter

    smooth = gaussian_filter(np.asarray(hu, dtype=np.float64), MASK_SMOOTH_SIGMA_PX)
    tissue = ((smooth >= TISSUE_HU[0]) & (smooth <= TISSUE_HU[1])).astype(np.float64)
    return uniform_filter(tissue, NOISE_WINDOW_PX, mode="constant") > 1.0 - 1e-6


def local_detrended_std(hu: np.ndarray) -> np.ndarray:
    """Per pixel: std (HU) of the 9 x 9 window around it after removing the window's best-fit plane.

    Removing the plane (least squares in x and y) keeps smooth gradients (a blurred organ edge, a
    cupping profile) out of the noise estimate; the variance is corrected for the 3 fitted parameters.
    """
    from scipy.ndimage import correlate, uniform_filter

    x = np.asarray(hu, dtype=np.float64)
    r = NOISE_WINDOW_PX // 2
    n = NOISE_WINDOW_PX * NOISE_WINDOW_PX
    off = np.arange(-r, r + 1, dtype=np.float64)
    kx = np.tile(off, (NOISE_WINDOW_PX, 1)) / n  # window mean of (column offset * value)
    var_off = float(np.mean(off**2))  # variance of the offsets in one direction
    mean = uniform_filter(x, NOISE_WINDOW_PX)
    ss = uniform_filter(x * x, NOISE_WINDOW_PX) - mean * mean  # window variance (1/n)
    cx = correlate(x, kx)  # covariance with the column offset (offsets have zero mean)
    cy = correlate(x, kx.T)
    resid = np.maximum(ss - (cx * cx + cy * cy) / var_off, 0.0) * n / (n - 3)
    return np.sqrt(resid)


def flat_noise_std(hu: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Noise standard deviation (HU) in homogeneous soft tissue of one slice; NaN if there is none.

    The physicist's ROI noise, automated: over 9 x 9 windows lying wholly in soft tissue (see
    :func:`flat_mask`), the std after removing each window's best-fit plane
    (:func:`local_detrended_std`); the median over windows is returned, so windows on organ boundaries
    or texture (larger values) are ignored as long as most of the tissue is flat. The same estimator is
    applied to the targets and to the filtered images, so its bias (e.g. for correlated noise) largely
    cancels in the comparison.

    Args:
        hu: (H, W) HU.
        mask: window centres to use; :func:`flat_mask` of ``hu`` when None. Pass the mask of the
            unfiltered image when measuring filtered versions of it, so the region stays the same.
    """
    if mask is None:
        mask = flat_mask(hu)
    if int(mask.sum()) < MIN_FLAT_PIXELS:
        return float("nan")
    return float(np.median(local_detrended_std(hu)[mask]))


def noise_level(images: Sequence[np.ndarray], masks: Sequence[np.ndarray] | None = None) -> float:
    """Median of :func:`flat_noise_std` over slices that have flat tissue; NaN if none has."""
    if masks is None:
        masks = [flat_mask(im) for im in images]
    vals = [v for v in (flat_noise_std(im, m) for im, m in zip(images, masks)) if math.isfinite(v)]
    return float(np.median(vals)) if vals else float("nan")


@dataclass(frozen=True)
class Tuned:
    """Result of matching one filter's output noise to a target on val slices."""

    param: float  # the chosen strength (sigma in px for Gaussian, h in HU for NLM)
    noise_hu: float  # flat-region noise of the filtered val low-dose slices at ``param``
    target_hu: float  # flat-region noise of the val full-dose slices
    input_noise_hu: float  # flat-region noise of the unfiltered val low-dose slices
    reached: bool  # False when the bounds stopped the search before the target

    def asdict(self) -> dict:
        return asdict(self)


def match_noise(
    apply: Callable[[np.ndarray, float], np.ndarray],
    images: Sequence[np.ndarray],
    target_hu: float,
    bounds: tuple[float, float],
    on_step: Callable[[], None] | None = None,
) -> Tuned:
    """Weakest strength in ``bounds`` whose filtered ``images`` have flat-region noise <= ``target_hu``.

    A coarse log-spaced scan from weak to strong stops at the first strength that reaches the target;
    bisection (log scale) then refines between it and the previous one. The scan, rather than a plain
    bisection, is robust to the noise curve flattening or rising again at strong smoothing (blurred
    structure entering the flat windows of small images). If nothing reaches the target, the strength
    with the lowest noise is returned with ``reached=False``.

    Args:
        apply: ``apply(image, strength) -> filtered image``.
        images: val low-dose slices (HU).
        target_hu: the noise to reach (val full-dose flat-region noise).
        bounds: (weakest, strongest) strength searched.
        on_step: called after every evaluation (progress).
    """
    masks = [flat_mask(im) for im in images]  # measured where the unfiltered slice is flat

    def level(p: float) -> float:
        v = noise_level([apply(im, p) for im in images], masks)
        if on_step is not None:
            on_step()
        return v

    input_noise = noise_level(images, masks)
    if not math.isfinite(target_hu) or not math.isfinite(input_noise):
        return Tuned(bounds[0], input_noise, target_hu, input_noise, reached=False)
    grid = np.geomspace(bounds[0], bounds[1], SCAN_POINTS)
    tried: list[tuple[float, float]] = []
    for i, p in enumerate(grid):
        n = level(float(p))
        tried.append((float(p), n))
        if n <= target_hu:
            break
    else:
        best = min(tried, key=lambda t: t[1] if math.isfinite(t[1]) else math.inf)
        return Tuned(best[0], best[1], target_hu, input_noise, reached=False)
    if i == 0:
        return Tuned(float(grid[0]), tried[0][1], target_hu, input_noise, reached=True)
    lo, (hi, n_hi) = float(grid[i - 1]), tried[-1]
    for _ in range(REFINE_STEPS):
        mid = math.sqrt(lo * hi)
        n_mid = level(mid)
        if n_mid > target_hu:
            lo = mid
        else:
            hi, n_hi = mid, n_mid
    return Tuned(hi, n_hi, target_hu, input_noise, reached=True)


def tune_gaussian(ld_images: Sequence[np.ndarray], target_hu: float, on_step: Callable[[], None] | None = None) -> Tuned:
    """Gaussian sigma (px) that brings val low-dose flat-region noise down to ``target_hu``."""
    return match_noise(gaussian_denoise, ld_images, target_hu, GAUSSIAN_SIGMA_RANGE, on_step=on_step)


def tune_nlm(
    ld_images: Sequence[np.ndarray], target_hu: float, on_step: Callable[[], None] | None = None
) -> tuple[Tuned, float]:
    """NLM h (HU) that brings val low-dose flat-region noise down to ``target_hu``.

    h is searched as a multiple of the val low-dose flat-region noise ``sigma``.

    Returns:
        (result with ``param`` = h in HU, sigma in HU).
    """
    sigma = noise_level(ld_images)
    if not math.isfinite(sigma) or sigma <= 0:
        sigma = 1.0
    tuned = match_noise(
        lambda im, f: nlm_denoise(im, f * sigma), ld_images, target_hu, NLM_H_RANGE, on_step=on_step
    )
    return Tuned(tuned.param * sigma, tuned.noise_hu, target_hu, tuned.input_noise_hu, tuned.reached), sigma


def n_tune_steps() -> int:
    """Upper bound of filter evaluations one :func:`match_noise` call makes (for progress bars)."""
    return SCAN_POINTS + REFINE_STEPS
