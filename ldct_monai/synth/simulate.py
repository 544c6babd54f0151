"""One simulated scan: HU volume -> sinogram -> full-dose and low-dose reconstructions (HU).

Both images come from the same measured full-dose projections, as in the Mayo data: the low-dose image
is the full-dose image plus the reconstruction of the inserted projection noise (FBP is linear, so
``FBP(p_fd + n) = FBP(p_fd) + FBP(n)``), hence correlated with it pixel for pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ldct_monai.synth.noise import MU_WATER, DoseProtocol, bowtie, flux_scale, full_dose_projections, low_dose_noise
from ldct_monai.synth.projector import ParallelGeometry, fbp, forward_project


@dataclass
class ScanResult:
    """Reconstructions of one series, all (slices, n, n) HU float32 tensors.

    Attributes:
        fd: full-dose image.
        ld: low-dose image (``fd`` plus inserted noise); None when not requested.
        fd_noise: reconstruction of the full-dose projection noise alone (for noise figures); None
            unless requested.
        fov_mask: (n, n) scan field of view.
        exposure_factor: (slices,) tube current of each slice relative to the protocol's (AEC).
        water_diameter: (slices,) water-equivalent diameter of each slice, mm.
    """

    fd: torch.Tensor
    ld: torch.Tensor | None
    fd_noise: torch.Tensor | None
    fov_mask: torch.Tensor
    exposure_factor: torch.Tensor
    water_diameter: torch.Tensor


def hu_to_mu(hu: torch.Tensor) -> torch.Tensor:
    """Linear attenuation (1/mm) from HU; below-air values clipped to zero attenuation."""
    return (MU_WATER * (1.0 + hu / 1000.0)).clamp_min(0.0)


def mu_to_hu(mu: torch.Tensor) -> torch.Tensor:
    """HU from linear attenuation (1/mm)."""
    return (mu / MU_WATER - 1.0) * 1000.0


def water_equivalent_diameter(p: torch.Tensor, geom: ParallelGeometry) -> torch.Tensor:
    """Water-equivalent diameter (mm) of each slice from its projections (AAPM report 220).

    Every parallel view integrates the whole slice: sum_t p(t) * bin = integral of mu over the slice.
    """
    area = p.sum(dim=-1).mean(dim=-1) * geom.spacing / MU_WATER  # water-equivalent area, mm^2
    return 2.0 * torch.sqrt(area.clamp_min(0.0) / math.pi)


def effective_flux(
    geom: ParallelGeometry, thickness: float, protocol: DoseProtocol, p: torch.Tensor
) -> tuple[torch.Tensor, float, torch.Tensor, torch.Tensor]:
    """Effective incident photons per slice and bin, with automatic exposure control.

    Args:
        p: (slices, views, bins) noise-free line integrals (the "topogram" the AEC plans from).

    Returns:
        (i0 of shape (slices, 1, bins), effective electronic noise std, exposure factor per slice,
        water-equivalent diameter per slice in mm).
    """
    scale = flux_scale(geom.n_views, geom.spacing, thickness)
    d_w = water_equivalent_diameter(p, geom)
    factor = torch.exp(protocol.aec_strength * MU_WATER * (d_w - protocol.reference_diameter)).clamp(0.25, 4.0)
    i0 = protocol.i0 * scale * factor[:, None, None] * bowtie(geom.n, geom.spacing, protocol, p.device)[None, None]
    return i0, protocol.electronic_noise * math.sqrt(scale), factor, d_w


def scan(
    hu: torch.Tensor,
    spacing: float,
    thickness: float,
    protocol: DoseProtocol,
    *,
    fraction: float | None,
    kernel: str,
    generator: torch.Generator,
    n_views: int | None = None,
    noise_slices: int = 0,
) -> ScanResult:
    """Scan a (slices, n, n) HU volume at full dose and, when ``fraction`` is given, at low dose.

    Args:
        hu: noise-free anatomy in HU (already averaged over each slice's thickness).
        spacing: pixel size, mm (also the detector bin width).
        thickness: slice thickness, mm (sets the photons per slice).
        protocol: full-dose protocol (flux, electronic noise, bowtie).
        fraction: low-dose fraction, or None for a full-dose scan only.
        kernel: reconstruction kernel, ``smooth`` or ``sharp``.
        generator: random generator for the photon and inserted noise.
        n_views: views over 180 degrees (default: the image size).
        noise_slices: reconstruct the full-dose noise alone for the first this-many slices.
    """
    n = hu.shape[-1]
    geom = ParallelGeometry.for_image(n, spacing, n_views)
    mask = geom.fov_mask(hu.device)
    mu = hu_to_mu(hu) * mask
    p = forward_project(mu, geom)
    i0, sigma_e, factor, d_w = effective_flux(geom, thickness, protocol, p)
    p_fd = full_dose_projections(p, i0, sigma_e, generator)
    parts = [p_fd]
    if fraction is not None:
        parts.append(low_dose_noise(p_fd, i0, sigma_e, fraction, generator))
    k = min(noise_slices, hu.shape[0])
    if k:
        parts.append(p_fd[:k] - p[:k])
    rec = fbp(torch.cat(parts), geom, kernel)
    s = hu.shape[0]
    fd = mu_to_hu(rec[:s])
    ld = fd + rec[s : 2 * s] * (1000.0 / MU_WATER) if fraction is not None else None
    off = 2 * s if fraction is not None else s
    fd_noise = rec[off : off + k] * (1000.0 / MU_WATER) if k else None
    return ScanResult(fd=fd, ld=ld, fd_noise=fd_noise, fov_mask=mask, exposure_factor=factor, water_diameter=d_w)


def insert_noise(
    hu: torch.Tensor,
    spacing: float,
    thickness: float,
    protocol: DoseProtocol,
    *,
    fraction: float,
    kernel: str,
    generator: torch.Generator,
    n_views: int | None = None,
) -> torch.Tensor:
    """Low-dose noise for an existing full-dose image, from its own (re-projected) sinogram.

    The image's sinogram stands in for the measured full-dose projections; the returned (slices, n, n)
    HU noise is added to the original pixels, which keep their own full-dose noise and sharpness.
    """
    n = hu.shape[-1]
    geom = ParallelGeometry.for_image(n, spacing, n_views)
    mask = geom.fov_mask(hu.device)
    p = forward_project(hu_to_mu(hu) * mask, geom)
    i0, sigma_e, _, _ = effective_flux(geom, thickness, protocol, p)
    noise = low_dose_noise(p, i0, sigma_e, fraction, generator)
    return fbp(noise, geom, kernel) * (1000.0 / MU_WATER)
