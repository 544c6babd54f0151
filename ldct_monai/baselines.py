"""Classical denoisers (Gaussian, non-local means, BM3D), the noise estimate they use, and their tuning.

They serve as ``evaluate``'s baselines and as ``denoise --method gaussian|nlm|bm3d``. All three work on
HU clipped to the full CT range [-1024, 3071] (what the model sees too), so padding outside the field of
view (-2000 / -3024 HU) is not smeared into the body.

* Gaussian filter (``scipy.ndimage.gaussian_filter``), strength = sigma in pixels.
* Non-local means (``skimage.restoration.denoise_nl_means``, fast mode), h = k x sigma_hat.
* BM3D (the ``bm3d`` package of Makinen, Azzari and Foi), sigma_psd = k x sigma_hat.

sigma_hat is the noise standard deviation of the slice itself (:func:`estimate_noise`): CT noise
varies from slice to slice (tube current modulation, patient size), so a multiplier of the slice's own
noise carries over between slices, series and doses where a fixed h in HU would not.

Tuning (see ``docs/evaluation.md``). With paired val slices (``val_pairs.csv``) each strength is chosen
per body part by windowed PSNR against the full-dose slice (:func:`tune_paired`). Without pairs the
val split is *unpaired* (val patients give either their low-dose or their full-dose series), so no
PSNR can pick a strength there: the Gaussian sigma is then matched to the noise of the val full-dose
slices (:func:`match_noise`, the medical physicist's criterion: noise std in homogeneous soft tissue)
and NLM and BM3D keep their default multipliers, measured on real anatomy.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from ldct_monai.errors import InputError
from ldct_monai.metrics import FULL_RANGE_HU, Window

log = logging.getLogger(__name__)

BASELINES = ("gaussian", "nlm", "bm3d")
METHOD_NAMES = {"gaussian": "Gaussian filter", "nlm": "non-local means", "bm3d": "BM3D"}
# What the strength of each method means; NLM and BM3D scale with the slice's own noise estimate.
STRENGTH_NAMES = {"gaussian": "sigma_px", "nlm": "k", "bm3d": "k"}
# Defaults when nothing is tuned (docs/evaluation.md, "Defaults"): measured on real anatomy with added noise.
DEFAULT_STRENGTH = {"gaussian": 0.6, "nlm": 0.9, "bm3d": 2.0}
STRENGTH_BOUNDS = {"gaussian": (0.1, 4.0), "nlm": (0.05, 4.0), "bm3d": (0.1, 8.0)}  # searched by tuning

# Flat-region noise estimate: soft tissue on a smoothed copy, local std in windows wholly inside it.
TISSUE_HU = (-50.0, 150.0)  # water-like soft tissue (muscle, organs, brain); excludes fat, lung, bone
BODY_MIN_HU = -900.0  # fallback region: inside the patient (lung parenchyma ~ -850 HU included, air not)
NOISE_WINDOW_PX = 9  # local std window; large enough for a stable std, small enough for small organs
MASK_SMOOTH_SIGMA_PX = 2.0  # smooth before thresholding so noise does not punch holes into the mask
MIN_FLAT_PIXELS = 64  # fewer flat pixels than this -> no estimate for the slice (flat_noise_std)
QUIET_FRACTION = 0.10  # estimate_noise uses the quietest 10 % of the windows: flat tissue, no texture
MIN_QUIET_WINDOWS = 32  # ... but at least this many (small images), when there are that many candidates
OUTLIER_RATIO = 1.5  # ... minus windows whose own std exceeds 1.5 x their median (structure, not noise)
MIN_NOISE_WINDOWS = 64  # fewer candidate windows in a region -> estimate_noise falls back to the next region
MAX_NOISE_WINDOWS = 4096  # evenly spaced subset of the quiet windows beyond this (cost; plenty for a std)
NOISE_CORR_LAG_PX = 4  # noise correlation assumed to vanish beyond this lag (CT kernels: ~1-3 px)

NLM_PATCH_SIZE = 5  # px; skimage's 2-D suggestion is 5 (7 is its default, slower, similar results)
NLM_PATCH_DISTANCE = 6  # px search radius (13 x 13 search window)
BM3D_PROFILE = "np"  # the bm3d package's default ("normal profile"); "refilter" fails for a scalar sigma in 4.0.3
GAUSSIAN_SIGMA_RANGE = (0.1, 4.0)  # px searched; 4 px already blurs a 512 px slice beyond clinical use
SCAN_POINTS = 8  # coarse log-spaced scan (neighbours ~1.7x apart) ...
REFINE_STEPS = 6  # ... then bisection: final bracket ~1.7^(1/64), under 1 %
TUNE_FACTOR = math.sqrt(2.0)  # paired tuning: grid points sqrt(2) apart around the default ...
TUNE_HALF_WIDTH = 2  # ... 2 on each side (default / 2 ... default x 2) ...
TUNE_MAX_EXTEND = 2  # ... extended at most twice when the best point is at the edge of the grid


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


def nlm_denoise(hu: np.ndarray, h_hu: float, sigma_hu: float = 0.0) -> np.ndarray:
    """Non-local means of one HU slice (skimage, fast mode, 5 x 5 patches, 13 x 13 search window).

    Patch weights ``exp(-max(d^2 - 2 sigma^2, 0) / h^2)`` with ``d^2`` the mean squared patch difference
    in HU^2 (skimage). With ``sigma_hu = 0`` (the default, and what the baselines use) this is plain NLM
    (Buades et al. 2005). Passing the noise estimate as ``sigma_hu`` (skimage's suggestion) did not
    score higher: on five real slices with 30 HU of added correlated noise its best windowed PSNR gain
    was +2.90 dB (at h = 0.8 sigma_hat) against +2.92 dB for plain NLM (at h = 0.9 sigma_hat); plain
    NLM is kept because ``h`` alone then sets the smoothing (with ``sigma`` every pure-noise patch
    weighs 1 whatever ``h`` is; docs/evaluation.md).

    Args:
        hu: (H, W) HU.
        h_hu: filter strength in HU (larger smooths more); ``k x sigma_hat`` in the baselines.
        sigma_hu: skimage's ``sigma`` (HU), subtracted from the patch distances; 0 for plain NLM.
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
        sigma=float(sigma_hu),
        fast_mode=True,
        preserve_range=True,
    )
    return np.asarray(out, dtype=np.float32)


def require_bm3d():
    """The ``bm3d`` module.

    Raises:
        InputError: it is not installed (it is a dependency of ldct-monai, but free for non-commercial
            use only, so a site may have left it out).
    """
    try:
        import bm3d
    except ImportError as err:
        raise InputError(
            f"BM3D needs the bm3d package (pip install 'bm3d>=4'; free for non-commercial use only), not importable: {err}."
        ) from err
    return bm3d


def bm3d_denoise(hu: np.ndarray, sigma_hu: float) -> np.ndarray:
    """BM3D of one HU slice (the ``bm3d`` package, both stages, its default "np" profile).

    BM3D's thresholds are tuned for images of unit range, so the slice clipped to [-1024, 3071] HU is
    mapped linearly to [0, 1] (data range 4095 HU), denoised with ``sigma_psd = sigma_hu / 4095`` (a
    scalar: white-noise model), and mapped back to HU.

    Args:
        hu: (H, W) HU.
        sigma_hu: the noise std BM3D assumes, in HU (``k x sigma_hat`` in the baselines; for correlated
            CT noise the best value is larger than the true std, docs/evaluation.md).
    """
    bm3d = require_bm3d()
    lo, hi = FULL_RANGE_HU
    x = clip_full(hu)
    if sigma_hu <= 0:
        return x
    unit = (x.astype(np.float64) - lo) / (hi - lo)
    out = bm3d.bm3d(unit, sigma_psd=float(sigma_hu) / (hi - lo), profile=BM3D_PROFILE)
    return np.clip(np.asarray(out, dtype=np.float64).reshape(x.shape) * (hi - lo) + lo, lo, hi).astype(np.float32)


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


@dataclass(frozen=True)
class NoiseEstimate:
    """Noise of one slice, estimated from the slice itself (:func:`estimate_noise`).

    Attributes:
        std_hu: noise standard deviation in HU.
        region: where it was measured: "soft tissue", or the fallbacks "body" and "whole slice".
        n_windows: 9 x 9 windows it was measured in.
    """

    std_hu: float
    region: str
    n_windows: int

    def asdict(self) -> dict:
        return asdict(self)


def estimate_noise(hu: np.ndarray) -> NoiseEstimate:
    """Noise std (HU) of one slice from its quietest 10 % of 9 x 9 soft-tissue windows.

    1. Candidate windows lie wholly in soft tissue (:func:`flat_mask`: [-50, 150] HU on a copy smoothed
       at 2 px).
    2. The quietest 10 % are kept (at least 32). A window's quietness is the mean detrended std
       (:func:`local_detrended_std`) of its four neighbours 9 px away (left, right, above, below; in
       small regions, those of them in the region, at least two), which share no pixel with it: choosing windows by their *own* std
       would keep those whose noise happened to come out low and bias the estimate down (by 13 % for
       white noise, more for correlated noise), while tissue that is flat around a window is flat in
       it too. Kept windows whose own std exceeds 1.5 x their median are dropped (an organ edge or a
       vessel inside a window with flat neighbours; pure noise almost never gets there).
    3. In those windows the noise variance is measured with CT's noise correlation taken into account:
       removing each window's mean and plane also removes the low-frequency part of correlated noise
       (a 9 x 9 window of Gaussian-blurred white noise with a 1 px blur shows ~18 % too little std).
       So the residual covariance of the windows (81 x 81, averaged) is fitted, by least squares, with
       a stationary noise autocovariance ``c(dy, dx)`` that vanishes beyond 4 px, and
       ``sqrt(c(0, 0))`` is returned. On Gaussian-blurred white noise (blur 0 - 1 px) this lands
       within 4 % of the true std on average; the plain windowed std of the same windows is 8 - 18 %
       low. On real slices with added noise it is within 3 - 4 % (docs/evaluation.md).

    skimage's wavelet ``estimate_sigma`` (median absolute deviation of the finest diagonal wavelet
    band) is not used: it assumes white noise, and CT noise, correlated by the reconstruction kernel,
    has little power in that band. On blurred white noise of 30 HU (1 px blur) it reports ~4 HU, and
    on real slices whose noise is 29 - 43 HU (added blurred noise) 9 - 23 HU (docs/evaluation.md).

    Fallbacks, so that every slice gets a finite estimate: with fewer than 64 candidate windows (a
    slice through the lung apex, a small image) the candidates are the windows wholly inside the body
    (smoothed HU >= -900: fat, lung and bone included, air excluded), and failing that every window of
    the slice (air, where nearly all windows are flat; the estimate is then the noise of the air). The
    region used is returned. HU are clipped to [-1024, 3071] first (padding outside the field of view
    is then a flat -1024 HU and only the whole-slice fallback can see it).

    Args:
        hu: (H, W) HU.

    Returns:
        The estimate, the region it was measured in and the number of windows.

    Raises:
        InputError: the slice is smaller than 27 x 27 px (three windows side by side).
    """
    x = clip_full(hu).astype(np.float64)
    w = NOISE_WINDOW_PX
    if x.ndim != 2 or min(x.shape) < 3 * w:
        raise InputError(f"noise estimate: expected a 2-D slice of at least {3 * w} x {3 * w} px, found shape {x.shape}.")
    s = local_detrended_std(x)
    inside = np.zeros(x.shape, dtype=bool)
    r = w // 2
    inside[r : x.shape[0] - r, r : x.shape[1] - r] = True  # window wholly inside the image
    regions = (("soft tissue", flat_mask(x)), ("body", _wholly_in(x, BODY_MIN_HU)), ("whole slice", inside))
    for region, mask in regions:
        for need in (4, 2):  # all four neighbours in the region; on small regions two suffice
            cand, quiet = _candidates(mask & inside, s, need)
            if int(cand.sum()) >= MIN_NOISE_WINDOWS:
                break
        if int(cand.sum()) >= MIN_NOISE_WINDOWS:
            break
    if not cand.any():  # cannot happen for >= 27 px slices, kept as a guard
        raise InputError(f"noise estimate: no 9 x 9 window with neighbours fits in a slice of shape {x.shape}.")
    q = quiet[cand]
    n_keep = max(math.ceil(QUIET_FRACTION * len(q)), min(len(q), MIN_QUIET_WINDOWS))
    centres = np.argwhere(cand)[np.sort(np.argsort(q, kind="stable")[:n_keep])]
    own = s[centres[:, 0], centres[:, 1]]
    centres = centres[own <= OUTLIER_RATIO * np.median(own)]
    if len(centres) > MAX_NOISE_WINDOWS:
        centres = centres[np.linspace(0, len(centres) - 1, MAX_NOISE_WINDOWS).round().astype(int)]
    from numpy.lib.stride_tricks import sliding_window_view

    win = sliding_window_view(x, (w, w))[centres[:, 0] - r, centres[:, 1] - r].reshape(len(centres), w * w)
    resid = win @ _detrend_projector()  # window minus its least-squares plane
    var = float(np.mean(np.einsum("ni,ij,nj->n", resid, _variance_weights(), resid)))
    return NoiseEstimate(std_hu=math.sqrt(max(var, 0.0)), region=region, n_windows=int(len(centres)))


def estimate_noise_std(hu: np.ndarray) -> float:
    """Noise std (HU) of one slice: :func:`estimate_noise` ``.std_hu``."""
    return estimate_noise(hu).std_hu


def _wholly_in(hu: np.ndarray, min_hu: float) -> np.ndarray:
    """Centres of 9 x 9 windows whose pixels all lie at or above ``min_hu`` on a copy smoothed at 2 px."""
    from scipy.ndimage import gaussian_filter, uniform_filter

    above = (gaussian_filter(hu, MASK_SMOOTH_SIGMA_PX) >= min_hu).astype(np.float64)
    return uniform_filter(above, NOISE_WINDOW_PX, mode="constant") > 1.0 - 1e-6


def _candidates(mask: np.ndarray, s: np.ndarray, need: int) -> tuple[np.ndarray, np.ndarray]:
    """Window centres in ``mask`` with at least ``need`` of their 4 neighbours 9 px away in ``mask``, and their quietness.

    Returns:
        (candidate mask, quietness = mean detrended std of the neighbours in ``mask``; inf off the candidates).
    """
    w = NOISE_WINDOW_PX
    h, wd = mask.shape
    pm = np.pad(mask, w, constant_values=False)
    ps = np.pad(s, w)
    count = np.zeros(s.shape, dtype=np.int64)
    total = np.zeros_like(s)
    for dy, dx in ((w, 0), (-w, 0), (0, w), (0, -w)):
        m = pm[w + dy : w + dy + h, w + dx : w + dx + wd]
        count += m
        total += np.where(m, ps[w + dy : w + dy + h, w + dx : w + dx + wd], 0.0)
    cand = mask & (count >= need)
    return cand, np.where(cand, total / np.maximum(count, 1), np.inf)


@functools.cache
def _detrend_projector() -> np.ndarray:
    """(81, 81) projector that removes a window's least-squares plane (symmetric, idempotent)."""
    r = NOISE_WINDOW_PX // 2
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    basis = np.stack([np.ones(yy.size), xx.ravel(), yy.ravel()], axis=1).astype(np.float64)
    return np.eye(yy.size) - basis @ np.linalg.pinv(basis)


@functools.cache
def _variance_weights() -> np.ndarray:
    """(81, 81) B with ``c(0, 0) = mean over windows of r' B r`` for residuals r of stationary noise.

    The expected residual covariance of noise with autocovariance ``c`` is ``P E(c) P`` (P the detrend
    projector, ``E(c)[i, j] = c(pos_i - pos_j)``), linear in the lags ``c(d)``, |dy|, |dx| <= 4. The
    least-squares solution for ``c(0, 0)`` is a fixed linear function of the averaged residual outer
    product ``M``: the first row of the design's pseudo-inverse, reshaped to 81 x 81.
    """
    r = NOISE_WINDOW_PX // 2
    lag = NOISE_CORR_LAG_PX
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    pos = np.stack([yy.ravel(), xx.ravel()], axis=1)
    d = pos[:, None, :] - pos[None, :, :]
    proj = _detrend_projector()
    lags = [(dy, dx) for dy in range(lag + 1) for dx in range(-lag, lag + 1) if dy > 0 or dx >= 0]  # (0, 0) first
    cols = []
    for dy, dx in lags:
        e = ((d[..., 0] == dy) & (d[..., 1] == dx)) | ((d[..., 0] == -dy) & (d[..., 1] == -dx))
        cols.append((proj @ e.astype(np.float64) @ proj).ravel())
    row = np.linalg.pinv(np.stack(cols, axis=1))[0]
    b = row.reshape(pos.shape[0], pos.shape[0])
    return (b + b.T) / 2.0


def flat_noise_std(hu: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Noise standard deviation (HU) in homogeneous soft tissue of one slice; NaN if there is none.

    The physicist's ROI noise, automated: over 9 x 9 windows lying wholly in soft tissue (see
    :func:`flat_mask`), the std after removing each window's best-fit plane
    (:func:`local_detrended_std`); the median over windows is returned, so windows on organ boundaries
    or texture (larger values) are ignored as long as most of the tissue is flat. The same estimator is
    applied to the targets and to the filtered images, so its bias (e.g. for correlated noise) largely
    cancels in the comparison: this is the *relative* measure the unpaired Gaussian tuning needs; the
    absolute noise of a slice is :func:`estimate_noise`.

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

    param: float  # the chosen strength (e.g. sigma in px for the Gaussian filter)
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


def n_tune_steps() -> int:
    """Upper bound of filter evaluations one :func:`match_noise` call makes (for progress bars)."""
    return SCAN_POINTS + REFINE_STEPS


# --------------------------------------------------------------------------------------------------
# One entry point per method, paired tuning, and the denoiser ``denoise --method`` uses
# --------------------------------------------------------------------------------------------------


def check_method(method: str) -> str:
    """``method`` lower-cased if it is one of :data:`BASELINES`.

    Raises:
        InputError: any other name.
    """
    m = str(method).strip().lower()
    if m not in BASELINES:
        raise InputError(f"unknown classical method {method!r} (expected one of {', '.join(BASELINES)}).")
    return m


def check_strength(method: str, strength: float) -> float:
    """``strength`` as a float if it is finite and >= 0 (sigma in px for Gaussian, k for NLM / BM3D).

    Raises:
        InputError: negative, NaN or infinite.
    """
    v = float(strength)
    if not math.isfinite(v) or v < 0:
        raise InputError(f"{method} strength ({STRENGTH_NAMES[check_method(method)]}) must be a finite number >= 0, found {strength}.")
    return v


def apply_baseline(method: str, hu: np.ndarray, strength: float, noise_hu: float | None = None) -> np.ndarray:
    """One classical denoiser on one HU slice.

    Args:
        method: "gaussian", "nlm" or "bm3d".
        hu: (H, W) HU.
        strength: sigma in px (Gaussian) or the multiplier k of the noise estimate (NLM: h = k sigma_hat;
            BM3D: sigma_psd = k sigma_hat).
        noise_hu: sigma_hat of ``hu`` when already known; :func:`estimate_noise_std` of ``hu`` when None
            (not used by the Gaussian filter).

    Returns:
        (H, W) float32 HU in [-1024, 3071].
    """
    method = check_method(method)
    if method == "gaussian":
        return gaussian_denoise(hu, strength)
    sigma = estimate_noise_std(hu) if noise_hu is None else float(noise_hu)
    if method == "nlm":
        return nlm_denoise(hu, strength * sigma)
    return bm3d_denoise(hu, strength * sigma)


def windowed_psnr(pred_hu: np.ndarray, ref_hu: np.ndarray, window: Window) -> float:
    """PSNR (dB, data range 1) of ``pred_hu`` against ``ref_hu`` in a reading window.

    Both are clipped to [-1024, 3071] HU and windowed (:meth:`Window.to_unit`), as the LDCTBench
    convention of :mod:`ldct_monai.metrics` does; +inf for identical images.
    """
    a = window.to_unit(np.clip(pred_hu, *FULL_RANGE_HU)).astype(np.float64)
    b = window.to_unit(np.clip(ref_hu, *FULL_RANGE_HU)).astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


@dataclass(frozen=True)
class PairedTuned:
    """Result of choosing one method's strength by windowed PSNR on paired val slices."""

    method: str
    param: float  # the chosen strength (sigma in px for Gaussian, k for NLM / BM3D)
    psnr_db: float  # mean windowed PSNR of the filtered val low-dose slices at ``param``
    input_psnr_db: float  # the same for the unfiltered val low-dose slices
    tried: tuple[tuple[float, float], ...]  # (strength, mean windowed PSNR) of every evaluation, in order
    at_bound: bool  # True when the best strength is at the edge of what was searched (not bracketed)
    n_pairs: int

    def asdict(self) -> dict:
        d = asdict(self)
        d["tried"] = [list(t) for t in self.tried]
        return d


def n_paired_steps() -> int:
    """Upper bound of filter evaluations one :func:`tune_paired` call makes (for progress bars)."""
    return 2 * TUNE_HALF_WIDTH + 1 + TUNE_MAX_EXTEND + 1


def tune_paired(
    method: str,
    pairs: Sequence[tuple[np.ndarray, np.ndarray, Window]],
    on_step: Callable[[], None] | None = None,
    noise_hu: Sequence[float] | None = None,
) -> PairedTuned:
    """Strength of ``method`` that maximises the mean windowed PSNR of paired val slices.

    Strengths ``default x sqrt(2)^j`` for j = -2 ... 2 are tried (Gaussian 0.35 - 1.4 px, NLM k 0.45 -
    1.8, BM3D k 1 - 4); while the best is at an edge the grid grows by one point that way (twice at
    most, within :data:`STRENGTH_BOUNDS`). A parabola through the best point and its neighbours (in
    log strength) then proposes the peak, which is evaluated and kept if it scores higher. 6 - 8
    evaluations in all: PSNR against strength is smooth and single-peaked for these filters.

    Args:
        method: "gaussian", "nlm" or "bm3d".
        pairs: (val low-dose HU, its full-dose HU, the body part's reading window) per slice.
        on_step: called after every evaluation (progress).
        noise_hu: sigma_hat of each low-dose slice, when known (e.g. measured on the whole slice of
            which ``pairs`` holds a crop); estimated from the given slices when None.

    Raises:
        InputError: unknown method, no pairs, or ``noise_hu`` of another length.
    """
    method = check_method(method)
    if not pairs:
        raise InputError(f"tuning {method}: no paired val slices.")
    if noise_hu is not None and len(noise_hu) != len(pairs):
        raise InputError(f"tuning {method}: {len(noise_hu)} noise values for {len(pairs)} pairs.")
    if method == "gaussian":
        noise: list[float | None] = [None] * len(pairs)
    else:
        noise = list(noise_hu) if noise_hu is not None else [estimate_noise_std(ld) for ld, _, _ in pairs]
    lo_b, hi_b = STRENGTH_BOUNDS[method]
    default = DEFAULT_STRENGTH[method]
    tried: list[tuple[float, float]] = []
    cache: dict[float, float] = {}

    def strength(j: float) -> float:
        return float(min(max(default * TUNE_FACTOR**j, lo_b), hi_b))

    def score(j: float) -> float:
        p = strength(j)
        if p not in cache:
            cache[p] = float(np.mean([windowed_psnr(apply_baseline(method, ld, p, n), fd, win) for (ld, fd, win), n in zip(pairs, noise)]))
            tried.append((p, cache[p]))
            if on_step is not None:
                on_step()
        return cache[p]

    lo, hi = -TUNE_HALF_WIDTH, TUNE_HALF_WIDTH
    scores = {j: score(j) for j in range(lo, hi + 1)}
    for _ in range(TUNE_MAX_EXTEND):
        best = max(scores, key=scores.__getitem__)
        if best == lo and strength(lo) > lo_b:
            lo -= 1
            scores[lo] = score(lo)
        elif best == hi and strength(hi) < hi_b:
            hi += 1
            scores[hi] = score(hi)
        else:
            break
    best = max(scores, key=scores.__getitem__)
    at_bound = best in (lo, hi)
    param, psnr_db = strength(best), scores[best]
    if not at_bound:
        s_m, s_0, s_p = scores[best - 1], scores[best], scores[best + 1]
        curv = s_m - 2 * s_0 + s_p
        if curv < 0:  # concave: the vertex lies within half a step of the best point
            j = best + 0.5 * (s_m - s_p) / curv
            if score(j) > psnr_db:
                param, psnr_db = strength(j), cache[strength(j)]
    inputs = [windowed_psnr(ld, fd, win) for ld, fd, win in pairs]
    return PairedTuned(method, param, psnr_db, float(np.mean(inputs)), tuple(tried), at_bound, len(pairs))


class ClassicalDenoiser:
    """A classical method with the interface of :class:`ldct_monai.inference.Denoiser` that
    :func:`ldct_monai.inference.denoise_stream` needs: ``batch_size``, ``device``, ``mode`` and
    ``denoiser(hu)`` for (H, W) or (B, H, W) HU.

    Slices are filtered one at a time on the CPU, each with its own noise estimate (NLM, BM3D).
    ``noise_hu``, ``regions`` and ``seconds`` collect the per-slice values for the run's summary.

    Args:
        method: "gaussian", "nlm" or "bm3d".
        strength: sigma in px (Gaussian) or the multiplier k (NLM, BM3D); :data:`DEFAULT_STRENGTH` when None.

    Raises:
        InputError: unknown method, bad strength, or the ``bm3d`` package missing for BM3D.
    """

    batch_size = 1  # one slice at a time: the filters are per slice anyway
    device = "cpu"
    mode = "per slice on the CPU"

    def __init__(self, method: str, strength: float | None = None) -> None:
        self.method = check_method(method)
        self.strength = DEFAULT_STRENGTH[self.method] if strength is None else check_strength(self.method, strength)
        if self.method == "bm3d":
            require_bm3d()  # fail before any slice is read
        self.noise_hu: list[float] = []
        self.regions: dict[str, int] = {}
        self.seconds: list[float] = []

    @property
    def name(self) -> str:
        return self.method

    def parameters(self) -> dict:
        """Method, strength, the noise estimates seen so far (median, min, max) and the library version."""
        out: dict = {"method": self.method, STRENGTH_NAMES[self.method]: self.strength, "library": library_version(self.method)}
        if self.noise_hu:
            out["noise_hu"] = {
                "median": float(np.median(self.noise_hu)),
                "min": float(np.min(self.noise_hu)),
                "max": float(np.max(self.noise_hu)),
                "regions": dict(self.regions),
            }
        if self.seconds:
            out["seconds_per_slice"] = float(np.mean(self.seconds))
        return out

    def describe(self) -> str:
        """What the method does with which parameters, for DerivationDescription (ASCII)."""
        return describe_method(self.method, self.strength)

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        """(H, W) or (B, H, W) HU -> filtered HU float32 of the same shape, in [-1024, 3071]."""
        hu = np.asarray(hu, dtype=np.float32)
        batch = hu[None] if hu.ndim == 2 else hu
        out = np.empty_like(batch)
        for i, x in enumerate(batch):
            t0 = time.perf_counter()
            noise = None
            if self.method != "gaussian":
                est = estimate_noise(x)
                noise = est.std_hu
                self.noise_hu.append(noise)
                self.regions[est.region] = self.regions.get(est.region, 0) + 1
            out[i] = apply_baseline(self.method, x, self.strength, noise)
            self.seconds.append(time.perf_counter() - t0)
        return out[0] if hu.ndim == 2 else out


def library_version(method: str) -> str:
    """'bm3d 4.0.3', 'scikit-image 0.25.2' or 'scipy 1.15.0': the package doing the filtering."""
    from importlib.metadata import PackageNotFoundError, version

    pkg = {"gaussian": "scipy", "nlm": "scikit-image", "bm3d": "bm3d"}[check_method(method)]
    try:
        return f"{pkg} {version(pkg)}"
    except PackageNotFoundError:
        return pkg


NOISE_DESCRIPTION = (
    "sigma_hat = noise std estimated per slice from its quietest 10 % of 9x9 soft-tissue windows "
    "(correlation-corrected, ldct_monai.baselines.estimate_noise)"
)


def describe_method(method: str, strength: float) -> str:
    """One sentence naming the method, its library and parameters (for DerivationDescription and reports)."""
    method = check_method(method)
    lib = library_version(method)
    if method == "gaussian":
        return f"Gaussian filter ({lib} gaussian_filter), sigma {strength:g} px, reflect borders"
    if method == "nlm":
        return (
            f"non-local means ({lib} denoise_nl_means, fast mode, {NLM_PATCH_SIZE}x{NLM_PATCH_SIZE} patches, "
            f"{2 * NLM_PATCH_DISTANCE + 1}x{2 * NLM_PATCH_DISTANCE + 1} search), h = {strength:g} x sigma_hat, {NOISE_DESCRIPTION}"
        )
    return (
        f"BM3D ({lib}, profile '{BM3D_PROFILE}', both stages) on HU [-1024, 3071] mapped to [0, 1], "
        f"sigma_psd = {strength:g} x sigma_hat, {NOISE_DESCRIPTION}"
    )
