"""Dose model: photon counts for the full-dose scan and projection-domain noise insertion for low dose.

Full dose: each ray gets ``N = I0 * b(t) * exp(-p)`` expected photons (``p`` the line integral, ``b``
the bowtie filter's transmission), measured as Poisson counts plus Gaussian electronic noise, then
log-transformed back to a noisy line integral.

Low dose: Yu et al. 2012 (Med. Phys. 39(5):2498, "Development and validation of a practical lower-dose
simulation tool for optimizing CT scan protocols"), the method behind the Mayo / TCIA low-dose series.
Noise is added to the *measured* full-dose line integrals so that their variance becomes that of a
scan at dose fraction ``a``, electronic noise included::

    p_a = p + sqrt( (1 - a)/a * exp(p)/I0 * (1 + (1 + a)/a * sigma_e^2 * exp(p)/I0) ) * x,   x ~ N(0, 1)

Flux is defined at a reference sampling (:data:`REF_VIEWS` views over 180 degrees, 1 mm detector bins
at the isocentre, 1 mm slices). Reconstructed noise variance scales as 1 / (I0 * views * bin^2 *
thickness), so the effective per-ray flux of a simulation is rescaled by :func:`flux_scale`: the HU
noise of a slice then depends on dose, patient, kernel and slice thickness, as on a scanner, but not on
the matrix size the user asked for (a 64-pixel tree carries the noise of a clinical 512 matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ldct_monai.schema import BodyPart

MU_WATER = 0.0193  # linear attenuation of water at ~70 keV (120 kVp effective), 1/mm
REF_VIEWS = 1000  # reference views over 180 degrees for the flux definition
REF_BIN = 1.0  # reference detector bin at the isocentre, mm
REF_THICKNESS = 1.0  # reference slice thickness, mm


@dataclass(frozen=True)
class DoseProtocol:
    """Scan protocol of one body part (full dose) and its default low-dose fraction.

    Attributes:
        i0: incident photons per ray at the reference sampling, centre of the bowtie (calibrated).
        dose_fraction: low-dose fraction of the Mayo data (0.25; chest 0.10).
        electronic_noise: electronic noise standard deviation, photons per ray at the reference sampling.
        bowtie_mm: water-equivalent bowtie thickness at ``bowtie_radius`` from the isocentre, mm.
        bowtie_radius: radius at which the bowtie reaches ``bowtie_mm``, mm.
        reference_diameter: water-equivalent diameter (mm) at which the flux is ``i0``.
        aec_strength: automatic exposure control (tube current modulation along z, as CARE Dose4D in the
            Mayo data): the flux of a slice is ``i0 * exp(aec_strength * mu_w * (D_w - reference_diameter))``
            for its water-equivalent diameter ``D_w`` (AAPM report 220), clamped to [1/4, 4]; 1 keeps the
            noise constant across patient sizes, 0 is a fixed tube current.
        tube_current_ma, exposure_mas, ctdi_vol: full-dose header values (XRayTubeCurrent, Exposure,
            CTDIvol in mGy); the low-dose series gets them times the dose fraction.
    """

    i0: float
    dose_fraction: float
    electronic_noise: float = 2.5
    bowtie_mm: float = 40.0
    bowtie_radius: float = 250.0
    reference_diameter: float = 300.0
    aec_strength: float = 0.8
    tube_current_ma: float = 200.0
    exposure_mas: float = 200.0
    ctdi_vol: float = 12.0


# I0 per body part calibrated against the Mayo/TCIA figures (docs/simulator.md, calibration table).
PROTOCOLS: dict[BodyPart, DoseProtocol] = {
    BodyPart.CHEST: DoseProtocol(
        i0=2.8e3, dose_fraction=0.10, reference_diameter=240.0, tube_current_ma=145, exposure_mas=72, ctdi_vol=7.5),
    BodyPart.ABDOMEN: DoseProtocol(
        i0=1.9e4, dose_fraction=0.25, reference_diameter=290.0, tube_current_ma=330, exposure_mas=165, ctdi_vol=13.0),
    BodyPart.HEAD: DoseProtocol(
        i0=2.0e4, dose_fraction=0.25, reference_diameter=190.0, bowtie_mm=25.0, bowtie_radius=130.0,
        tube_current_ma=380, exposure_mas=380, ctdi_vol=55.0,
    ),
}


def flux_scale(n_views: int, bin_mm: float, thickness_mm: float) -> float:
    """Factor from reference flux to effective per-ray flux of a simulation's sampling.

    Keeps the reconstructed noise in HU independent of the matrix (views x bin^2) while thicker slices
    collect proportionally more photons (noise ~ 1/sqrt(thickness)).
    """
    return (REF_VIEWS * REF_BIN**2) / (n_views * bin_mm**2) * (thickness_mm / REF_THICKNESS)


def bowtie(n_det: int, bin_mm: float, protocol: DoseProtocol, device: torch.device | str = "cpu") -> torch.Tensor:
    """Transmission of the bowtie filter per detector bin: exp(-mu_w * w(t)), w growing off-centre."""
    t = (torch.arange(n_det, device=device, dtype=torch.float32) - (n_det - 1) / 2) * bin_mm
    r = (t / protocol.bowtie_radius).clamp(-1.0, 1.0)
    w = protocol.bowtie_mm * (1 - torch.sqrt(1 - r**2))  # 0 at the centre, bowtie_mm at bowtie_radius
    return torch.exp(-MU_WATER * w)


def full_dose_projections(
    p: torch.Tensor, i0: torch.Tensor, sigma_e: float, generator: torch.Generator
) -> torch.Tensor:
    """Noisy full-dose line integrals: Poisson counts plus electronic noise, log-transformed.

    Args:
        p: (..., n_det) noise-free line integrals.
        i0: effective incident photons per ray (flux x bowtie x AEC x :func:`flux_scale`), broadcastable to ``p``.
        sigma_e: effective electronic noise standard deviation, photons.
        generator: torch random generator (reproducible runs).

    Returns:
        Line integrals of the measured counts; counts below 1 photon are clamped to 1 (as a scanner's
        log stage does), which makes photon-starved rays streak.
    """
    expected = i0 * torch.exp(-p)
    counts = torch.poisson(expected, generator=generator)
    counts = counts + sigma_e * torch.randn(counts.shape, generator=generator, dtype=counts.dtype)
    return torch.log(i0 / counts.clamp_min(1.0))


def low_dose_noise(
    p_fd: torch.Tensor, i0: torch.Tensor, sigma_e: float, fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """Noise to add to measured full-dose line integrals to simulate dose ``fraction`` (Yu et al. 2012).

    Args:
        p_fd: (..., n_det) measured full-dose line integrals.
        i0: effective full-dose incident photons per ray, broadcastable to ``p_fd``.
        sigma_e: effective electronic noise standard deviation, photons.
        fraction: dose fraction in (0, 1].

    Returns:
        Zero-mean Gaussian noise with the Yu et al. variance, same shape as ``p_fd``.
    """
    a = float(fraction)
    inv = torch.exp(p_fd.clamp(max=20.0)) / i0  # 1 / expected full-dose counts
    var = (1 - a) / a * inv * (1 + (1 + a) / a * sigma_e**2 * inv)
    return torch.sqrt(var) * torch.randn(p_fd.shape, generator=generator, dtype=p_fd.dtype)
