"""Parallel-beam CT geometry in torch: forward projector, filtered back projection, reconstruction kernels.

A square image of ``n`` pixels of ``spacing`` mm is scanned over 180 degrees by ``n_views`` parallel
projections with ``n`` detector bins of ``spacing`` mm (so the scan field of view is the image's
inscribed circle, as in a clinical reconstruction whose FOV equals the image width). Both operators
are batched over slices (the channel dimension of :func:`torch.nn.functional.grid_sample`), so a whole
series costs one interpolation pass per view chunk, not a Python loop over slices and views.

Parallel beam rather than fan beam: Siemens scanners (the Mayo data) rebin their fan-beam data to
parallel rays before filtered back projection, and the noise of a parallel FBP image has the same
structure (1/counts variance per ray, ramp-filtered, spread along the rays: streaks behind bone and
along long paths).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: Apodisation windows of the reconstruction kernels, applied to the ramp filter in the frequency domain.
#: ``smooth`` plays Siemens B30f (body soft tissue), ``sharp`` plays D45f (the second Mayo kernel). The
#: window parameters were chosen so that the noise ratio sharp / smooth is the 105 / 65 HU = 1.6 of the
#: Mayo data (docs/simulator.md, calibration table).
KERNELS: dict[str, dict[str, float]] = {
    "smooth": {"cutoff": 0.73, "power": 1.0, "boost": 0.0},  # Hann window reaching zero at 0.73 Nyquist
    "sharp": {"cutoff": 1.0, "power": 1.0, "boost": 0.1},  # Hann window to Nyquist, mid-frequency lift (edges)
}

#: DICOM ConvolutionKernel written for each simulator kernel (the Mayo names).
KERNEL_DICOM_NAME = {"smooth": "B30f", "sharp": "D45f"}


@dataclass(frozen=True)
class ParallelGeometry:
    """Parallel-beam scan of a square ``n`` x ``n`` image.

    Attributes:
        n: image size in pixels (rows = columns) and number of detector bins.
        spacing: pixel size and detector bin width at the isocentre, mm.
        n_views: projections over 180 degrees.
    """

    n: int
    spacing: float
    n_views: int

    @classmethod
    def for_image(cls, n: int, spacing: float, n_views: int | None = None) -> ParallelGeometry:
        """Geometry for an ``n``-pixel image; ``n_views`` defaults to ``n`` (about 2/3 of full angular
        sampling: aliasing streaks stay below the noise at the image edge)."""
        return cls(n=n, spacing=float(spacing), n_views=int(n_views or max(n, 32)))

    def angles(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """View angles in radians, [0, pi)."""
        return torch.arange(self.n_views, device=device, dtype=torch.float32) * (math.pi / self.n_views)

    def fov_mask(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """Boolean (n, n) mask of the scan field of view (the image's inscribed circle)."""
        c = (torch.arange(self.n, device=device, dtype=torch.float32) - (self.n - 1) / 2) / (self.n / 2)
        return (c[None, :] ** 2 + c[:, None] ** 2) <= 1.0


def forward_project(mu: torch.Tensor, geom: ParallelGeometry, view_chunk: int | None = None) -> torch.Tensor:
    """Line integrals of an attenuation map (ray-driven, bilinear, one sample per pixel along each ray).

    Args:
        mu: (slices, n, n) linear attenuation in 1/mm; zero outside the inscribed circle is assumed.
        geom: scan geometry.
        view_chunk: views interpolated per pass (memory: slices x chunk x n^2 floats); default
            :func:`default_view_chunk`.

    Returns:
        (slices, n_views, n) dimensionless line integrals.
    """
    n = geom.n
    view_chunk = view_chunk or default_view_chunk(n)
    out = torch.empty(mu.shape[0], geom.n_views, n, device=mu.device, dtype=torch.float32)
    img = mu[None].float()  # (1, slices, n, n)
    for v0 in range(0, geom.n_views, view_chunk):
        grid = _projection_grid(n, geom.n_views, v0, view_chunk, str(mu.device))
        views = grid.shape[1] // n
        samples = F.grid_sample(img, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        out[:, v0 : v0 + views] = samples.reshape(mu.shape[0], views, n, n).sum(dim=2)
    return out * geom.spacing


def default_view_chunk(n: int) -> int:
    """Views per interpolation pass: 32 up to 256 pixels, fewer above (memory ~ chunk x n^2 x slices)."""
    return 32 if n <= 256 else max(4, int(32 * (256 / n) ** 2))


def ramp_filter(
    n_det: int, spacing: float, kernel: str | torch.Tensor = "smooth", device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Frequency response of the apodised ramp filter for zero-padded projections (rfft layout).

    The ramp is the FFT of the band-limited spatial Ram-Lak kernel (no DC offset, as in Kak & Slaney
    ch. 3), multiplied by the kernel's window ``W(f) = (1 + boost * sin(pi f))
    * cos(pi f / 2 cutoff)^(2 power)`` for ``f`` (fraction of Nyquist) below ``cutoff``, 0 above.

    Args:
        kernel: a name in :data:`KERNELS`, or a window sampled uniformly on [0, 1] x Nyquist (a 1-D
            tensor, linearly interpolated): how ``synth --from-series`` reproduces the noise texture it
            measured on a real series.

    Returns:
        (n_pad // 2 + 1,) real filter; n_pad = next power of two >= 2 n_det.
    """
    if isinstance(kernel, torch.Tensor):
        n_pad = max(64, 2 ** math.ceil(math.log2(2 * n_det)))
        ramp = _ram_lak(n_pad, spacing)
        grid = kernel.to(torch.float64).flatten()
        pos = torch.linspace(0, 1, ramp.numel(), dtype=torch.float64) * (grid.numel() - 1)
        lo = pos.floor().long().clamp(max=grid.numel() - 1)
        hi = (lo + 1).clamp(max=grid.numel() - 1)
        window = grid[lo] + (grid[hi] - grid[lo]) * (pos - lo)
        return (ramp * window).to(device=device, dtype=torch.float32)
    if kernel not in KERNELS:
        raise ValueError(f"Unknown reconstruction kernel {kernel!r}; expected one of {sorted(KERNELS)}.")
    n_pad = max(64, 2 ** math.ceil(math.log2(2 * n_det)))
    ramp = _ram_lak(n_pad, spacing)
    f = torch.linspace(0, 1, ramp.numel(), dtype=torch.float64)  # fraction of Nyquist
    p = KERNELS[kernel]
    window = torch.where(f <= p["cutoff"], torch.cos(math.pi * f / (2 * p["cutoff"])) ** (2 * p["power"]), 0.0)
    window = window * (1 + p["boost"] * torch.sin(math.pi * f))
    return (ramp * window).to(device=device, dtype=torch.float32)


def _ram_lak(n_pad: int, spacing: float) -> torch.Tensor:
    """rfft of the band-limited spatial Ram-Lak kernel for ``n_pad`` samples of ``spacing`` mm (float64)."""
    k = torch.arange(-(n_pad // 2), n_pad // 2, dtype=torch.float64)
    h = torch.zeros_like(k)
    h[k == 0] = 1.0 / (4 * spacing**2)
    odd = (k.abs() % 2) == 1
    h[odd] = -1.0 / (math.pi * k[odd] * spacing) ** 2
    return torch.fft.rfft(torch.fft.ifftshift(h)).real * spacing  # times dt: discrete convolution


def fbp(
    sino: torch.Tensor, geom: ParallelGeometry, kernel: str | torch.Tensor = "smooth", view_chunk: int | None = None
) -> torch.Tensor:
    """Filtered back projection of parallel-beam projections.

    Args:
        sino: (slices, n_views, n) line integrals.
        geom: scan geometry.
        kernel: ``smooth`` or ``sharp`` (see :data:`KERNELS`), or a sampled window (:func:`ramp_filter`).

    Returns:
        (slices, n, n) attenuation in 1/mm; zero outside the scan field of view.
    """
    n, device = geom.n, sino.device
    view_chunk = view_chunk or default_view_chunk(n)
    filt = ramp_filter(n, geom.spacing, kernel, device)
    n_pad = 2 * (filt.numel() - 1)
    q = torch.fft.irfft(torch.fft.rfft(sino.float(), n=n_pad, dim=-1) * filt, n=n_pad, dim=-1)[..., :n]
    img = torch.zeros(sino.shape[0], n * n, device=device, dtype=torch.float32)
    for v0 in range(0, geom.n_views, view_chunk):
        grid = _backprojection_grid(n, geom.n_views, v0, view_chunk, str(device))
        rows = q[:, v0 : v0 + grid.shape[0]].permute(1, 0, 2)[:, :, None]  # (chunk, slices, 1, n)
        img += F.grid_sample(rows, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[:, :, 0].sum(0)
    img = img.reshape(-1, n, n) * (math.pi / geom.n_views)
    return img * geom.fov_mask(device)


# Interpolation grids depend only on (n, views), not on the data: cached for small images, where
# computing them is a quarter of the work, recomputed for large ones (a 512 x 512 x 512-view grid is 1 GiB).
_CACHE_MAX_N = 256


_CACHES: list = []


def _cached(func):
    cached = functools.lru_cache(maxsize=16)(func)  # one 256-pixel geometry needs 8 chunks of 17 MB
    _CACHES.append(cached)

    @functools.wraps(func)
    def wrapper(n: int, n_views: int, v0: int, chunk: int, device: str) -> torch.Tensor:
        return cached(n, n_views, v0, chunk, device) if n <= _CACHE_MAX_N else func(n, n_views, v0, chunk, device)

    return wrapper


def clear_cache() -> None:
    """Free the cached interpolation grids (a few hundred MB after a 256-pixel run)."""
    for cached in _CACHES:
        cached.cache_clear()


def _view_angles(n_views: int, v0: int, chunk: int, device: str) -> torch.Tensor:
    views = torch.arange(v0, min(v0 + chunk, n_views), device=device, dtype=torch.float64)
    return (views * (math.pi / n_views)).float()


def _norm_coords(n: int, device: str) -> torch.Tensor:
    return (torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2) * (2.0 / (n - 1))


@_cached
def _projection_grid(n: int, n_views: int, v0: int, chunk: int, device: str) -> torch.Tensor:
    """Sample points of the rays of views v0..v0+chunk: (1, chunk * n, n, 2), normalised image coordinates."""
    c = _norm_coords(n, device)
    s, t = torch.meshgrid(c, c, indexing="ij")  # s along the ray (summed), t across (detector bin)
    th = _view_angles(n_views, v0, chunk, device)
    cos, sin = torch.cos(th)[:, None, None], torch.sin(th)[:, None, None]
    x = t[None] * cos - s[None] * sin
    y = t[None] * sin + s[None] * cos
    return torch.stack((x, y), dim=-1).reshape(1, -1, n, 2)


@_cached
def _backprojection_grid(n: int, n_views: int, v0: int, chunk: int, device: str) -> torch.Tensor:
    """Detector position of every pixel centre for views v0..v0+chunk: (chunk, 1, n^2, 2), normalised."""
    c = _norm_coords(n, device)
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    th = _view_angles(n_views, v0, chunk, device)
    tpos = torch.cos(th)[:, None] * xx.reshape(-1) + torch.sin(th)[:, None] * yy.reshape(-1)
    return torch.stack((tpos, torch.zeros_like(tpos)), dim=-1)[:, None]
