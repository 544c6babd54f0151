"""The CycleGAN's noise generator (``fd2ld: noise``): fresh noise of a measured level and NPS shape, and the
training step that uses it (F learns from D_ld; G from the backward cycle, after its warm-up)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ldct_monai.errors import InputError
from ldct_monai.networks import NoiseGenerator
from ldct_monai.noise_prior import highpass_scale, kernel_from_nps, measure_prior
from ldct_monai.synth import nps
from ldct_monai.train_config import TrainConfig
from train_fixtures import TINY, assert_resumes_exactly, make_manifest, one_thread  # noqa: F401 (a fixture)


def test_noise_generator_adds_fresh_noise_at_each_body_parts_level():
    torch.manual_seed(0)
    f = NoiseGenerator(n_parts=3, kernel_size=7).calibrate_({0: 0.02, 1: 0.05, 2: 0.01, 3: 0.03})
    y = torch.zeros(4, 1, 64, 64)
    parts = torch.tensor([0, 1, 2, -1])
    with torch.no_grad():
        a, b = f(y, parts), f(y, parts)
    assert a.shape == y.shape and not torch.equal(a, b)  # a new draw each call
    stds = (a - y).flatten(1).std(1)
    assert torch.allclose(stds, torch.tensor([0.02, 0.05, 0.01, 0.03]), rtol=0.1)  # -1 = unknown = index 3
    assert torch.allclose(f(y).sub(y).std(), torch.tensor(0.03), rtol=0.1)  # no body part: the unknown level
    assert f(torch.ones(1, 1, 16, 16)).max() <= 1.0  # stays in the network's range


def test_each_body_part_gets_noise_of_its_own_nps_shape():
    """Kernels from two measured NPS (a smooth kernel's peak at 0.15, a sharp one's at 0.4 cycles/pixel),
    one per body part: each body part's noise peaks where its NPS does, at unit variance."""
    freq = (np.arange(nps.N_BINS) + 0.5) / (2 * nps.N_BINS)
    peaks = {0: 0.4, 1: 0.15}
    kernels = {i: torch.from_numpy(kernel_from_nps(freq, freq * np.exp(-0.5 * ((freq - pk) / 0.08) ** 2), 15))
               for i, pk in peaks.items()}
    f = NoiseGenerator(n_parts=3, kernel_size=15).calibrate_({}, kernels)
    torch.manual_seed(0)
    for part, peak in peaks.items():
        with torch.no_grad():
            noise = f.noise(torch.zeros(64, 1, nps.ROI_PX, nps.ROI_PX), torch.full((64,), part))[:, 0].double().numpy()
        assert noise.std() == pytest.approx(1.0, rel=0.05)  # unit variance: the level is the amplitude alone
        fr, measured = nps.radial_nps(noise)
        assert nps.peak_frequency(fr, measured) == pytest.approx(peak, abs=0.06)


def test_highpass_ratio_follows_the_noise_ratio():
    rng = np.random.default_rng(0)
    img = np.full((96, 96), 40.0)
    low = [img + 90.0 * rng.standard_normal(img.shape) for _ in range(2)]
    full = [img + 30.0 * rng.standard_normal(img.shape) for _ in range(2)]
    assert highpass_scale(low) / highpass_scale(full) == pytest.approx(3.0, rel=0.05)


def test_prior_measures_the_added_noise_of_the_training_split(tmp_path):
    """On the fixture (LD 45 HU, FD 12 HU) the prior adds sqrt(45^2 - 12^2) = 43 HU."""
    man = make_manifest(tmp_path, size=192, slices=3, fd_sigma=12.0, ld_sigma=45.0)
    prior = measure_prior(man, TrainConfig())
    ld, fd = prior.levels[3]  # all slices (the fixture has no body part column values of its own)
    assert fd == pytest.approx(12.0, rel=0.25) and ld == pytest.approx(45.0, rel=0.25)
    assert prior.added_std_hu(3) == pytest.approx(np.sqrt(ld**2 - fd**2))
    assert set(prior.fd_nps) == {1, 3} and all(np.isfinite(v).all() for v in prior.fd_nps.values())


def test_noise_mode_refuses_identity_terms():
    with pytest.raises(InputError, match="identity"):
        TrainConfig(fd2ld="noise")  # lambda_identity defaults to 5
    TrainConfig(fd2ld="noise", lambda_identity=0.0)


def test_noise_cyclegan_keeps_g_during_its_warm_up_and_f_learns(tmp_path, one_thread):
    from ldct_monai.data import UnpairedBatches, split_records
    from ldct_monai.engine import CycleGAN

    man = make_manifest(tmp_path, size=96, slices=3)
    cfg = TrainConfig.from_dict({**TINY, "manifest": str(man), "out": "unused", "fd2ld": "noise", "lambda_identity": 0.0,
                                 "lambda_adv_fd": 0.0, "d_warmup_steps": 1, "ld2fd_warmup_steps": 3, "lr": 1e-2})
    model = CycleGAN(cfg, torch.device("cpu"), total_steps=20, decay_steps=0)
    assert isinstance(model.gens.fd2ld, NoiseGenerator)
    level0 = model.gens.fd2ld.log_amplitude.detach().exp() * 4095 / 2  # calibrated from the training slices (HU)
    prior = measure_prior(man, cfg)
    assert float(level0[1]) == pytest.approx(prior.added_std_hu(1), rel=1e-4)  # the fixture is all abdomen (L)
    assert float(level0[0]) == pytest.approx(prior.added_std_hu(3), rel=1e-4)  # no chest: the level of all slices
    batches = UnpairedBatches(cfg, split_records(man, "train_ld", "ld", "low"), split_records(man, "train_fd", "fd", "full"))
    batch = next(iter(batches.epoch(0)))
    snap = lambda m: {k: v.clone() for k, v in m.state_dict().items()}  # noqa: E731
    g0, f0 = snap(model.gens.ld2fd), snap(model.gens.fd2ld)
    for _ in range(3):
        assert torch.isfinite(model.train_step(*batch)).all()
    assert all(torch.equal(g0[k], v) for k, v in model.gens.ld2fd.state_dict().items())  # G kept its start
    assert any(not torch.equal(f0[k], v) for k, v in model.gens.fd2ld.state_dict().items())  # F learnt from D_ld
    model.train_step(*batch)
    assert any(not torch.equal(g0[k], v) for k, v in model.gens.ld2fd.state_dict().items())  # then G learns


def test_noise_cyclegan_resumes_exactly(tmp_path, one_thread):
    """F draws fresh noise every step (global torch RNG, saved in checkpoints) at a per-image level (its
    reference saved with F): 3 + 3 steps == 6 steps."""
    man = make_manifest(tmp_path, size=48, slices=3)
    kw = {**TINY, "manifest": str(man), "fd2ld": "noise", "noise_level": "image", "lambda_identity": 0.0, "ld2fd_warmup_steps": 2,
          "total_steps": 6, "val_every": 3, "checkpoint_every": 3}
    assert_resumes_exactly(kw, tmp_path, split=3)


def test_noise_lr_zero_keeps_f_at_its_measurement(tmp_path, one_thread):
    """The cpu-finetune preset's setting: F stays where the measurement put it; G still learns from the cycle."""
    from ldct_monai.data import UnpairedBatches, split_records
    from ldct_monai.engine import CycleGAN

    man = make_manifest(tmp_path, size=48, slices=2)
    cfg = TrainConfig.from_dict({**TINY, "manifest": str(man), "out": "unused", "fd2ld": "noise", "lambda_identity": 0.0,
                                 "lambda_adv_fd": 0.0, "noise_lr": 0.0, "lr": 1e-2})
    preset = TrainConfig.from_preset("cpu-finetune")
    assert preset.noise_lr == 0.0 and preset.noise_level == "image" and preset.noise_source == "ld-residual"
    model = CycleGAN(cfg, torch.device("cpu"), total_steps=20, decay_steps=0)
    batch = next(iter(UnpairedBatches(cfg, split_records(man, "train_ld", "ld", "low"),
                                      split_records(man, "train_fd", "fd", "full")).epoch(0)))
    f0 = {k: v.clone() for k, v in model.gens.fd2ld.state_dict().items()}
    g0 = {k: v.clone() for k, v in model.gens.ld2fd.state_dict().items()}
    for _ in range(2):
        model.train_step(*batch)
    assert all(torch.equal(f0[k], v) for k, v in model.gens.fd2ld.state_dict().items())
    assert any(not torch.equal(g0[k], v) for k, v in model.gens.ld2fd.state_dict().items())


def test_image_level_follows_each_images_own_noise():
    """noise_level: image: a full-dose image with twice the reference's noise gets twice the level; an image
    without soft tissue (air) keeps its body part's level; without a reference the level is the part's."""
    torch.manual_seed(0)
    f = NoiseGenerator(n_parts=3, kernel_size=7).calibrate_({1: 0.05})
    soft = (-0.65, -0.35)  # -300..300 HU in the [-1024, 3071] window
    base = torch.full((1, 1, 96, 96), -0.49)  # 40 HU
    quiet, loud = (base + s * torch.randn(1, 1, 96, 96) for s in (0.01, 0.02))
    air = torch.full((1, 1, 96, 96), -1.0)
    x, parts = torch.cat([quiet, loud, air]), torch.tensor([1, 1, 1])
    with torch.no_grad():
        before = f.amplitude(x, parts).flatten(1).mean(1)
    assert torch.allclose(before, torch.full((3,), 0.05), rtol=1e-5)  # no reference yet: one level per part
    ref, _ = f.fine_scale(quiet)
    f.follow_image_noise_({1: float(ref[0])}, soft)
    with torch.no_grad():
        after = f.amplitude(x, parts).flatten(1).mean(1)
    assert float(after[0]) == pytest.approx(0.05, rel=1e-4)
    assert float(after[1]) == pytest.approx(0.10, rel=0.05)  # twice the noise, twice the level
    assert float(after[2]) == pytest.approx(0.05, rel=1e-4)  # no soft tissue: the part's level
    assert torch.equal(f.state_dict()["reference_scale"], f.reference_scale)  # saved with F (exact resume)


def test_prior_sets_the_image_reference_from_the_training_full_dose(tmp_path):
    from ldct_monai.noise_prior import calibrate

    man = make_manifest(tmp_path, size=96, slices=3, fd_sigma=12.0, ld_sigma=45.0)
    cfg = TrainConfig(manifest=str(man), fd2ld="noise", lambda_identity=0.0, noise_level="image")
    f = NoiseGenerator(n_parts=3)
    prior = calibrate(f, man, cfg)
    assert float(f.reference_scale[1]) > 0 and float(f.reference_scale[3]) > 0
    fd = torch.from_numpy(np.stack([(im + 1024.0) * 2 / 4095 - 1 for im in prior.fd_images[1]])[:, None]).float()
    factor = f._image_factor(fd, torch.ones(len(fd), dtype=torch.long))
    assert torch.allclose(factor.median(), torch.tensor(1.0), atol=0.05)  # the training FD is its own reference
    with pytest.raises(InputError, match="noise_level"):
        TrainConfig(noise_level="slice")


def test_ld_residual_needs_a_trained_start_and_the_noise_mode():
    with pytest.raises(InputError, match="ld-residual"):
        TrainConfig(fd2ld="noise", lambda_identity=0.0, noise_source="ld-residual")  # no --init-generator
    with pytest.raises(InputError, match="ld-residual"):
        TrainConfig(noise_source="ld-residual", init_generator="builtin")  # the ResNet F
    with pytest.raises(InputError, match="noise_source"):
        TrainConfig(noise_source="bank")


class _HalfDenoiser(torch.nn.Module):
    """A G0 that takes out half of the noise around a known clean image (network units)."""

    def __init__(self, clean: torch.Tensor) -> None:
        super().__init__()
        self.clean = torch.nn.Parameter(clean, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.clean + 0.5 * (x - self.clean)


def test_residual_scale_gives_the_residual_the_added_noise_level():
    """s_b = sigma_add / sigma_res: a G0 that leaves half the noise has a residual of half sigma_LD, so s_b
    doubles against sigma_add / sigma_LD; a G0 that removes nothing leaves no residual, and sigma_LD stands in."""
    from ldct_monai.noise_prior import NoisePrior, residual_level, residual_scales

    window = TrainConfig().hu_window
    rng = np.random.default_rng(0)
    clean = np.full((128, 128), 40.0, np.float32)
    lds = [clean + rng.normal(0, 45.0, clean.shape).astype(np.float32) for _ in range(2)]
    half = _HalfDenoiser(torch.from_numpy(window.to_unit(clean))[None, None].float())
    assert residual_level(lds, half, window) == pytest.approx(22.5, rel=0.05)
    prior = NoisePrior(levels={1: (45.0, 12.0)}, ld_images={1: lds})
    added = prior.added_std_hu(1)
    scale = residual_scales(prior, half, window)
    assert float(scale[1]) == pytest.approx(added / 22.5, rel=0.05)
    assert float(scale[0]) == float(scale[2]) == 1.0  # no level for these body parts, nor for all slices
    identity = torch.nn.Conv2d(1, 1, 1, bias=False)
    torch.nn.init.ones_(identity.weight)
    assert float(residual_scales(prior, identity, window)[1]) == pytest.approx(added / 45.0, rel=1e-5)


def test_ld_residual_adds_the_low_doses_own_noise_and_keeps_its_start(tmp_path, one_thread):
    """noise_source: ld-residual: F(FD) = FD + s_b (LD - G0(LD)) with G0 the frozen start and s_b the
    prior's sigma_add over the residual's level; G learns from it, G0 does not move, and 2 + 2 resumed steps equal 4."""
    from ldct_monai.data import UnpairedBatches, split_records
    from ldct_monai.engine import CycleGAN
    from ldct_monai.noise_prior import residual_scales

    man = make_manifest(tmp_path, size=128, slices=2, fd_sigma=12.0, ld_sigma=45.0)
    arch = {"ngf": 24, "n_blocks": 4, "g_norm": "none", "init_identity": False}  # the shipped model's
    kw = {**TINY, **arch, "manifest": str(man), "fd2ld": "noise", "lambda_identity": 0.0, "lambda_adv_fd": 0.0,
          "noise_lr": 0.0, "noise_source": "ld-residual", "init_generator": "builtin"}
    cfg = TrainConfig.from_dict({**kw, "out": "unused"})
    from ldct_monai.engine import init_generator_state

    model = CycleGAN(cfg, torch.device("cpu"), total_steps=20, decay_steps=0)
    state, _ = init_generator_state("builtin", cfg)
    model.start_from(state)
    scale = residual_scales(measure_prior(man, cfg), model.gens.start, cfg.hu_window)
    assert torch.allclose(model.gens.residual_scale, scale) and float(scale[1]) > 0  # set by start_from, with G0
    batch = next(iter(UnpairedBatches(cfg, split_records(man, "train_ld", "ld", "low"),
                                      split_records(man, "train_fd", "fd", "full")).epoch(0)))
    ld, fd, ld_bp, _ = batch
    with torch.no_grad():
        fake = model.gens.add_ld_residual(ld, fd, ld_bp)
        want = fd + scale[1] * (ld - model.gens.start(ld))
    assert torch.allclose(fake, want.clamp(-1, 1), atol=1e-5)
    g0 = {k: v.clone() for k, v in model.gens.start.state_dict().items()}
    model.train_step(*batch)
    model.train_step(*batch)
    assert all(torch.equal(g0[k], v) for k, v in model.gens.start.state_dict().items())  # G0 stays the start
    assert any(not torch.equal(g0[k], v) for k, v in model.gens.ld2fd.state_dict().items())  # G learns
    assert_resumes_exactly({**kw, "total_steps": 4, "checkpoint_every": 2, "val_every": 2}, tmp_path, split=2)
