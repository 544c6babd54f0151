"""Image-quality metrics for paired low-dose / full-dose CT, under two stated conventions.

Every number ``evaluate`` reports is one of PSNR (dB), SSIM (unitless) and RMSE (HU) of an image
against its paired full-dose slice, computed under each of two conventions side by side:

``full``
    The full 12-bit CT range [-1024, 3071] HU (the MathWorks example's ``normalizeCTImages``): both
    images are clipped to it and mapped linearly to [0, 1], so PSNR's data range is 4095 HU. RMSE is in
    HU on the clipped images.
``ldctbench``
    The LDCTBench convention (Eulig et al.): both images are clipped to [-1024, 3071] HU (anything
    below -1024 HU is padding or undershoot: air) and windowed with the body part's reading
    window (chest C -600 / W 1500, abdomen C 50 / W 400, head C 40 / W 80; the DICOM linear VOI
    function, clipping outside the window) to [0, 1]; PSNR and SSIM are computed on that. RMSE is in HU
    on images clipped to [-1024, 1900] HU (air to dense bone).

Both conventions use a *fixed* map from HU to [0, 1], never per-image min-max normalisation: min-max
rescales each image by its own extremes (one hot pixel or a metal streak changes every value), so a
constant HU error can vanish or grow and two methods are no longer on the same scale.

PSNR and SSIM are MONAI's :class:`~monai.metrics.PSNRMetric` and :class:`~monai.metrics.SSIMMetric`
(Gaussian window 11 px, sigma 1.5, K1 0.01, K2 0.03, "valid" convolution: the mean over window
positions fully inside the image, as in Wang et al. 2004).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from ldct_monai.schema import BodyPart, body_part_of

CONVENTIONS = ("full", "ldctbench")  # column suffixes of every metric
METRICS = ("psnr", "ssim", "rmse")
METRIC_COLUMNS = tuple(f"{m}_{c}" for c in CONVENTIONS for m in METRICS)
METRIC_UNITS = {"psnr": "dB", "ssim": "", "rmse": "HU"}

FULL_RANGE_HU = (-1024.0, 3071.0)  # the MathWorks normalisation; data range 4095 HU
LDCTBENCH_RMSE_RANGE_HU = (-1024.0, 1900.0)  # LDCTBench clips to [air, dense bone] before RMSE


@dataclass(frozen=True)
class Window:
    """A CT reading window (centre and width in HU) applied with the DICOM linear VOI function.

    DICOM PS3.3 C.11.2.1.2: values at or below ``c - 0.5 - (w - 1) / 2`` map to 0, above
    ``c - 0.5 + (w - 1) / 2`` to 1, linearly in between (LDCTBench's ``apply_center_width``).
    """

    center: float
    width: float

    def __post_init__(self) -> None:
        if not self.width > 1:
            raise ValueError(f"window width must be > 1 HU, found {self.width}.")

    @property
    def lower(self) -> float:
        """HU mapped to 0 (and everything below it)."""
        return self.center - 0.5 - (self.width - 1.0) / 2.0

    @property
    def upper(self) -> float:
        """HU mapped to 1 (and everything above it)."""
        return self.center - 0.5 + (self.width - 1.0) / 2.0

    def to_unit(self, hu: np.ndarray) -> np.ndarray:
        """HU -> [0, 1] float32, clipping outside the window."""
        x = (np.asarray(hu, dtype=np.float64) - (self.center - 0.5)) / (self.width - 1.0) + 0.5
        return np.clip(x, 0.0, 1.0).astype(np.float32)

    def asdict(self) -> dict[str, float]:
        return asdict(self)


# LDCTBench reading windows (Eulig et al., "LDCTBench", 2024).
LDCTBENCH_WINDOWS: dict[BodyPart, Window] = {
    BodyPart.CHEST: Window(-600.0, 1500.0),
    BodyPart.ABDOMEN: Window(50.0, 400.0),
    BodyPart.HEAD: Window(40.0, 80.0),
}


@dataclass(frozen=True)
class SSIMSettings:
    """SSIM parameters (Wang et al. 2004 defaults), passed to MONAI's ``SSIMMetric``."""

    kernel_type: str = "gaussian"  # Gaussian weighting of the local statistics, as in the SSIM paper
    win_size: int = 11  # px, the paper's 11 x 11 window
    kernel_sigma: float = 1.5  # px
    k1: float = 0.01  # luminance stabiliser: C1 = (K1 * L)^2, L = data range = 1
    k2: float = 0.03  # contrast stabiliser: C2 = (K2 * L)^2

    def asdict(self) -> dict:
        return asdict(self)


SSIM_SETTINGS = SSIMSettings()


def full_range_unit(hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] over the full range [-1024, 3071] HU, clipping outside it (float32)."""
    lo, hi = FULL_RANGE_HU
    return ((np.clip(np.asarray(hu, dtype=np.float64), lo, hi) - lo) / (hi - lo)).astype(np.float32)


def _as_batch(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 2:
        return x[None]
    if x.ndim != 3:
        raise ValueError(f"expected (H, W) or (B, H, W) images, found shape {x.shape}.")
    return x


def psnr(pred: np.ndarray, ref: np.ndarray, data_range: float = 1.0, device: str | None = None) -> np.ndarray:
    """PSNR in dB of each image against ``ref`` (MONAI ``PSNRMetric``): 20 log10(range) - 10 log10(MSE).

    Args:
        pred: (H, W) or (B, H, W), already on the scale ``data_range`` refers to.
        ref: (H, W) (shared by the batch) or (B, H, W).
        data_range: the maximum minus minimum possible value (1.0 for the [0, 1] conventions).
        device: torch device to compute on (e.g. the model's GPU); CPU when None.

    Returns:
        float64 array (B,); +inf where the images are identical.
    """
    import torch
    from monai.metrics import PSNRMetric

    p, r = _tensors(pred, ref, device)
    with torch.no_grad():
        out = PSNRMetric(max_val=data_range, reduction="none")(p, r)
    return out[:, 0].double().cpu().numpy()


def ssim(
    pred: np.ndarray,
    ref: np.ndarray,
    data_range: float = 1.0,
    settings: SSIMSettings = SSIM_SETTINGS,
    device: str | None = None,
) -> np.ndarray:
    """Mean SSIM of each image against ``ref`` (MONAI ``SSIMMetric``, settings in :class:`SSIMSettings`).

    Args:
        pred: (H, W) or (B, H, W); each side must be at least ``settings.win_size`` px.
        ref: (H, W) (shared by the batch) or (B, H, W).
        data_range: value range L of the images (C1 = (K1 L)^2, C2 = (K2 L)^2).
        settings: window and constants.
        device: torch device to compute on; CPU when None (MONAI's 2-D 11 x 11 convolutions cost about
            0.3 s per 512 px image on 2 CPU cores, next to nothing on a GPU).

    Returns:
        float64 array (B,).
    """
    import torch
    from monai.metrics import SSIMMetric

    p, r = _tensors(pred, ref, device)
    if min(p.shape[-2:]) < settings.win_size:
        raise ValueError(f"SSIM needs images of at least {settings.win_size} px per side, found {p.shape[-2:]}.")
    metric = SSIMMetric(
        spatial_dims=2,
        data_range=data_range,
        kernel_type=settings.kernel_type,
        win_size=settings.win_size,
        kernel_sigma=settings.kernel_sigma,
        k1=settings.k1,
        k2=settings.k2,
        reduction="none",
    )
    with torch.no_grad():
        out = metric(p, r)
    return out[:, 0].double().cpu().numpy()


def rmse_hu(pred: np.ndarray, ref: np.ndarray, hu_range: tuple[float, float]) -> np.ndarray:
    """Root-mean-square error in HU after clipping both images to ``hu_range``; (B,) float64."""
    p, r = _pair(pred, ref)
    lo, hi = hu_range
    d = np.clip(p.astype(np.float64), lo, hi) - np.clip(r.astype(np.float64), lo, hi)
    return np.sqrt(np.mean(d * d, axis=(-2, -1)))


def _pair(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p = _as_batch(pred)
    r = _as_batch(ref)
    if r.shape[0] == 1 and p.shape[0] > 1:
        r = np.broadcast_to(r, p.shape)
    if p.shape != r.shape:
        raise ValueError(f"images and reference differ in shape: {p.shape} vs {r.shape}.")
    return np.ascontiguousarray(p), np.ascontiguousarray(r)


def _tensors(pred: np.ndarray, ref: np.ndarray, device: str | None):
    """(B, 1, H, W) float32 tensors on ``device`` for MONAI's metrics (ref broadcast to the batch)."""
    import torch

    p, r = _pair(pred, ref)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    return torch.from_numpy(p)[:, None].to(dev), torch.from_numpy(r)[:, None].to(dev)


def slice_metrics(
    pred_hu: np.ndarray, ref_hu: np.ndarray, body_part: BodyPart | str, device: str | None = None
) -> list[dict[str, float]]:
    """All metrics of one or more images (HU) against one full-dose reference slice (HU).

    Args:
        pred_hu: (H, W) or (B, H, W) in HU (e.g. input, model, baselines stacked).
        ref_hu: (H, W) full-dose slice in HU.
        body_part: selects the LDCTBench window.
        device: torch device for PSNR / SSIM (CPU when None); results agree to float32 precision.

    Returns:
        one dict per image with the keys of :data:`METRIC_COLUMNS`.
    """
    bp = body_part_of(body_part)
    win = LDCTBENCH_WINDOWS[bp]
    # Below -1024 HU there is no tissue, only padding outside the field of view (-2000, -3024 HU) or
    # reconstruction undershoot: it is air in both conventions. Without this the chest window
    # (lower edge -1350 HU) would count padding against any image whose padding was set to -1024 HU.
    p = np.clip(_as_batch(pred_hu), *FULL_RANGE_HU)
    r = np.clip(np.asarray(ref_hu, dtype=np.float32), *FULL_RANGE_HU)
    cols = {
        "psnr_full": psnr(full_range_unit(p), full_range_unit(r), device=device),
        "ssim_full": ssim(full_range_unit(p), full_range_unit(r), device=device),
        "rmse_full": rmse_hu(p, r, FULL_RANGE_HU),
        "psnr_ldctbench": psnr(win.to_unit(p), win.to_unit(r), device=device),
        "ssim_ldctbench": ssim(win.to_unit(p), win.to_unit(r), device=device),
        "rmse_ldctbench": rmse_hu(p, r, LDCTBENCH_RMSE_RANGE_HU),
    }
    return [{k: float(v[i]) for k, v in cols.items()} for i in range(p.shape[0])]


def conventions_description() -> dict:
    """The two conventions as data, for ``summary.json`` and the docs."""
    return {
        "full": {
            "hu_range": list(FULL_RANGE_HU),
            "data_range_hu": FULL_RANGE_HU[1] - FULL_RANGE_HU[0],
            "psnr_ssim_on": "clip to [-1024, 3071] HU, map linearly to [0, 1] (data range 1 = 4095 HU)",
            "rmse_on": "HU clipped to [-1024, 3071]",
        },
        "ldctbench": {
            "windows": {bp.value: LDCTBENCH_WINDOWS[bp].asdict() for bp in LDCTBENCH_WINDOWS},
            "psnr_ssim_on": "body-part window (DICOM linear VOI, clipped) mapped to [0, 1] (data range 1)",
            "rmse_on": f"HU clipped to [{LDCTBENCH_RMSE_RANGE_HU[0]:g}, {LDCTBENCH_RMSE_RANGE_HU[1]:g}]",
            "rmse_hu_range": list(LDCTBENCH_RMSE_RANGE_HU),
        },
        "ssim": {**SSIM_SETTINGS.asdict(), "implementation": "monai.metrics.SSIMMetric (valid convolution, mean)"},
        "psnr": {"implementation": "monai.metrics.PSNRMetric", "formula": "20 log10(1) - 10 log10(MSE) on the [0, 1] scale"},
        "normalisation": "fixed HU maps only; never per-image min-max",
    }


def finite_or_none(x: float) -> float | None:
    """JSON-safe float: NaN and +-inf (identical images give PSNR = inf) become None."""
    return float(x) if math.isfinite(x) else None
