"""Where the CycleGAN's noise generator (``fd2ld: noise``) starts: the noise of the unpaired training slices.

The physics of a dose reduction with filtered back-projection (``docs/simulator.md``): the added noise has
the NPS *shape* of the full-dose image's own noise, and its variance is what low dose has beyond full dose,
``sigma_LD^2 - sigma_FD^2``. Both come from unpaired slices of the training split, per body part:

- sigma_FD and the NPS with the simulator's flat-ROI estimator (``ldct_monai.synth.nps``: the least
  structured 10 % of detrended 32 px soft-tissue ROIs). skimage's wavelet ``estimate_sigma`` would
  underestimate correlated CT noise.
- sigma_LD as sigma_FD times the ratio of fine detail, low dose over full dose (:func:`highpass_scale`),
  not by flat ROIs of the low dose: there the least structured ROIs are picked by their noise, which biases
  the level low where noise varies across the body. On simulated 10 % dose real abdomen the added noise came
  out at 24 HU by flat ROIs and 33 HU by the ratio; on the twins (which this never reads) LD - FD has 40 HU
  in soft tissue. At 5 % dose chest no low-dose ROI stays in the soft-tissue range at all.

The measurement is only the start: the CycleGAN's discriminator on low dose then refines the level, the
kernel and the HU dependence adversarially.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldct_monai.networks import MIN_SOFT_SHARE
from ldct_monai.schema import BODY_PARTS, Dose
from ldct_monai.synth import nps
from ldct_monai.train_config import TrainConfig

log = logging.getLogger(__name__)

SLICES_PER_PART = 6  # slices per body part and dose: enough flat ROIs for a level within ~10 %
SOFT_TISSUE_HU = (-300.0, 300.0)  # where fine detail measures noise (noise_level: image), as highpass_scale
MIN_ADDED_SHARE = 0.1  # added noise is at least this share of the low-dose noise (a level must stay learnable)


@dataclass
class NoisePrior:
    """Measured noise of the training split: HU levels and the full-dose NPS, per body part.

    ``levels`` maps a body-part index (``BODY_PARTS``, or ``len(BODY_PARTS)`` for all slices together) to
    ``(sigma_LD, sigma_FD)`` in HU, ``fd_nps`` the same indices to the radial full-dose NPS at ``freq``.
    Body parts are scanned with different kernels: on simulated real anatomy the NPS peaks at 0.28 (chest),
    0.09 (abdomen) and 0.14 cycles/pixel (head), 0.16 pooled.
    """

    levels: dict[int, tuple[float, float]] = field(default_factory=dict)
    freq: np.ndarray | None = None
    fd_nps: dict[int, np.ndarray] = field(default_factory=dict)
    fd_images: dict[int, list[np.ndarray]] = field(default_factory=dict)  # the measured full-dose slices, HU
    ld_images: dict[int, list[np.ndarray]] = field(default_factory=dict)  # the measured low-dose slices, HU

    def added_std_hu(self, index: int) -> float:
        """Std (HU) of the noise a dose reduction adds for body part ``index``: sqrt(sigma_LD^2 - sigma_FD^2)."""
        ld, fd = self.levels[index]
        return math.sqrt(max(ld * ld - fd * fd, (MIN_ADDED_SHARE * ld) ** 2))

    def describe(self) -> str:
        names = [*BODY_PARTS, "all"]
        return "; ".join(f"{names[i]}: LD {ld:.1f} HU, FD {fd:.1f} HU -> adds {self.added_std_hu(i):.1f} HU"
                         for i, (ld, fd) in sorted(self.levels.items()))


def kernel_from_nps(freq: np.ndarray, spectrum: np.ndarray, size: int) -> np.ndarray:
    """A ``size`` x ``size`` filter whose output, for white input, has the radial NPS ``spectrum`` (shape only).

    The amplitude response is sqrt(NPS) on a 64-point frequency grid (radially interpolated); its inverse
    FFT, centred and cropped to ``size``, is the kernel (real and symmetric, as the response is).
    """
    n = 64
    f = np.fft.fftfreq(n)
    radius = np.hypot(f[:, None], f[None, :])
    amp = np.sqrt(np.clip(np.interp(radius, freq, np.nan_to_num(spectrum), right=0.0), 0.0, None))
    k = np.fft.fftshift(np.real(np.fft.ifft2(amp)))
    c, h = n // 2, size // 2
    k = k[c - h : c + h + 1, c - h : c + h + 1]
    norm = np.linalg.norm(k)
    if not np.isfinite(norm) or norm <= 0:
        k = np.zeros((size, size))
        k[h, h] = 1.0
        return k
    return k / norm


def _measure(images: list[np.ndarray]) -> nps.NoiseMeasurement | None:
    if not images:
        return None
    m = nps.measure(images, nps.select_rois(images))
    return m if math.isfinite(m.std_hu) and m.n_rois > 0 else None


def highpass_scale(images: list[np.ndarray]) -> float:
    """Robust scale (HU) of the fine detail of ``images`` inside the body: 1.4826 MAD of ``image - blur_1px``.

    Not a noise level (anatomy edges and the NPS shape enter it); what it is for is a *ratio*: low dose
    over full dose, whose NPS shapes agree, gives sigma_LD / sigma_FD. The median keeps the few pixels on
    edges out.
    """
    from scipy.ndimage import gaussian_filter

    values = []
    for im in images:
        im = np.asarray(im, np.float32)
        values.append((im - gaussian_filter(im, 1.0))[_soft_tissue(im)])
    return _robust_std(values, min_size=1)


def _soft_tissue(image: np.ndarray) -> np.ndarray:
    """Pixels whose 3 px smoothed HU lies in ``SOFT_TISSUE_HU`` (noise does not move the mask much)."""
    from scipy.ndimage import gaussian_filter

    smooth = gaussian_filter(np.asarray(image, np.float32), 3.0)
    return (smooth > SOFT_TISSUE_HU[0]) & (smooth < SOFT_TISSUE_HU[1])


def _robust_std(values: list[np.ndarray], min_size: int) -> float:
    """1.4826 MAD of the pooled ``values`` (NaN with fewer than ``min_size``)."""
    v = np.concatenate(values) if values else np.zeros(0)
    return float(1.4826 * np.median(np.abs(v - np.median(v)))) if v.size >= min_size else float("nan")


def measure_prior(manifest_dir: Path, config: TrainConfig, slices_per_part: int = SLICES_PER_PART) -> NoisePrior:
    """The noise of up to ``slices_per_part`` evenly spaced train_ld and train_fd slices per body part."""
    from ldct_monai.data import BODY_PART, split_records
    from ldct_monai.schema import body_part_index
    from ldct_monai.transforms import load_transforms

    window = config.hu_window
    images: dict[str, dict[int, list[np.ndarray]]] = {}
    for key, split, dose in (("ld", "train_ld", Dose.LOW.value), ("fd", "train_fd", Dose.FULL.value)):
        records = split_records(Path(manifest_dir), split, key, dose)
        load = load_transforms([key], window)
        by_part: dict[int, list[dict]] = {}
        for rec in records:
            by_part.setdefault(body_part_index(rec[BODY_PART]), []).append(rec)
        images[key] = {}
        for part, recs in by_part.items():
            idx = np.unique(np.linspace(0, len(recs) - 1, min(slices_per_part, len(recs))).round().astype(int))
            images[key][part] = [window.to_hu(load(recs[int(i)])[key].numpy()[0]) for i in idx]
    prior = NoisePrior()
    groups = {p: (images["ld"].get(p, []), images["fd"].get(p, [])) for p in range(len(BODY_PARTS))}
    groups[len(BODY_PARTS)] = tuple([im for part in images[k].values() for im in part] for k in ("ld", "fd"))
    for index, (ld_imgs, fd_imgs) in groups.items():
        fd = _measure(fd_imgs)
        if fd is None:
            continue
        prior.freq, prior.fd_nps[index], prior.fd_images[index] = fd.freq, fd.nps, fd_imgs
        if not ld_imgs:
            continue
        prior.ld_images[index] = ld_imgs
        ratio = highpass_scale(ld_imgs) / highpass_scale(fd_imgs)
        if math.isfinite(ratio) and ratio > 0:
            prior.levels[index] = (ratio * fd.std_hu, fd.std_hu)
    return prior


def calibrate(generator, manifest_dir: Path, config: TrainConfig) -> NoisePrior:
    """Start ``generator`` (a :class:`~ldct_monai.networks.NoiseGenerator`) at the measured prior; return it.

    Body parts without a measurement start at the level of all slices together; with no flat tissue at all
    the generator keeps its defaults (white noise, ``amplitude``) and a warning says so.
    """
    prior = measure_prior(manifest_dir, config)
    unit = 2.0 / (config.hu_high - config.hu_low)  # HU -> network units
    everything = len(BODY_PARTS)
    if everything not in prior.levels:
        log.warning("fd2ld noise: no flat soft tissue in the training slices to measure noise on; the noise "
                    "generator starts white, at its default level.")
        return prior
    import torch

    # a level of all slices implies their NPS: body parts without their own use those of all slices
    amps, kernels = {}, {}
    for i in range(everything + 1):
        amps[i] = prior.added_std_hu(i if i in prior.levels else everything) * unit
        spectrum = prior.fd_nps.get(i, prior.fd_nps[everything])
        kernels[i] = torch.from_numpy(kernel_from_nps(prior.freq, spectrum, generator.kernel.shape[-1])).float()
    generator.calibrate_(amps, kernels)
    log.info("Noise generator starts from the training slices' noise: %s.", prior.describe())
    if config.noise_level == "image":
        window = config.hu_window
        soft = tuple(float(v) for v in window.to_unit(np.asarray(SOFT_TISSUE_HU)))
        generator.follow_image_noise_({}, soft)  # the soft-tissue range first: fine_scale measures there
        reference = {}
        for i in range(everything + 1):
            images = prior.fd_images.get(i, prior.fd_images[everything])
            x = torch.from_numpy(window.to_unit(np.stack(images))[:, None])
            scale, share = generator.fine_scale(x)
            scale = scale[share >= MIN_SOFT_SHARE]
            if scale.numel():
                reference[i] = float(scale.median())
        generator.follow_image_noise_(reference, soft)
        log.info("Noise generator level follows each image's fine-detail noise (noise_level: image); "
                 "reference per body part: %s (network units).",
                 ", ".join(f"{[*BODY_PARTS, 'all'][i]} {v:.4f}" for i, v in sorted(reference.items())))
    return prior


def residual_level(images: list[np.ndarray], start, window) -> float:
    """Robust std (HU, 1.4826 MAD) of ``LD - G0(LD)`` in the soft tissue of low-dose ``images``.

    G0 (``start``, a trained denoiser) does not take out all of a low-dose image's noise: what it leaves
    is missing from its residual. Measured on a simulated sharper-kernel domain (train twins): the residual
    held 0.99x the LD - FD noise of abdomen, 0.85x of chest and 0.89x of the phantom heads' (in the brain).
    """
    import torch

    values = []
    param = next(start.parameters())
    with torch.no_grad():
        for im in images:
            x = torch.from_numpy(window.to_unit(np.asarray(im, np.float32))[None, None]).to(param.device, param.dtype)
            residual = window.to_hu(x.cpu().numpy()[0, 0]) - window.to_hu(start(x).float().cpu().numpy()[0, 0])
            values.append(residual[_soft_tissue(im)])
    return _robust_std(values, min_size=1000)


def residual_scales(prior: NoisePrior, start, window):
    """``s_b = sigma_add / sigma_res`` per body-part index (``noise_source: ld-residual``): the factor that
    gives ``LD - G0(LD)`` the std of the noise a dose reduction adds to full dose. ``sigma_res`` is the
    residual's level on the prior's low-dose slices (:func:`residual_level`); where it cannot be measured
    (under 1 000 soft-tissue pixels) sigma_LD stands in, as if G0 took out all of the noise. Body parts
    without a level use all slices'; 1 without any level. A (n_parts + 1,) float tensor."""
    import torch

    everything = len(BODY_PARTS)
    out = torch.ones(everything + 1)
    names = [*BODY_PARTS, "all"]
    report = []
    sigma: dict[int, float] = {}  # per measured level: body parts without one share the level of all slices
    for i in range(everything + 1):
        j = i if i in prior.levels else everything
        if j not in prior.levels:
            continue
        if j not in sigma:
            sigma[j] = residual_level(prior.ld_images.get(j, []), start, window)
            if not (math.isfinite(sigma[j]) and sigma[j] > 0):
                sigma[j] = prior.levels[j][0]
        sigma_res = sigma[j]
        out[i] = prior.added_std_hu(j) / sigma_res
        report.append(f"{names[i]} {sigma_res:.1f} HU (LD {prior.levels[j][0]:.1f}) -> x{float(out[i]):.2f}")
    if report:
        log.info("Site's own noise (noise_source: ld-residual): LD - G0(LD) in soft tissue: %s.", "; ".join(report))
    return out


__all__ = ["NoisePrior", "measure_prior", "calibrate", "kernel_from_nps", "residual_level", "residual_scales"]
