"""Generators, discriminators and the small pieces of the CycleGAN (pairs, image pool, lr schedule)."""

from __future__ import annotations

import pytest
import torch

from ldct_monai.engine import (
    CycleGAN,
    DiscriminatorPair,
    GeneratorPair,
    ImagePool,
    condition_planes,
    discriminator_view,
    lr_factor,
    reading_window_channel,
)
from ldct_monai.errors import InputError
from ldct_monai.networks import ResNetGenerator, make_discriminator
from ldct_monai.train_config import TrainConfig


@pytest.mark.parametrize("upsample", ["resize", "transpose"])
@pytest.mark.parametrize("residual", [True, False])
def test_generator_keeps_shape_and_range(upsample, residual):
    g = ResNetGenerator(ngf=4, n_blocks=2, upsample=upsample, residual=residual).eval()
    x = torch.rand(2, 1, 32, 48) * 2 - 1
    with torch.no_grad():
        y = g(x)
    assert y.shape == x.shape and float(y.abs().max()) <= 1.0


def test_generator_layout_and_errors():
    g = ResNetGenerator(ngf=4, n_blocks=3)
    convs = [m for m in g.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs[0].kernel_size == (7, 7) and convs[-1].kernel_size == (7, 7)  # 7x7 stem and head
    assert [c.stride for c in convs[1:3]] == [(2, 2), (2, 2)]  # two stride-2 downsamplings
    assert sum(isinstance(m, torch.nn.ReflectionPad2d) for m in g.modules()) >= 2 + 2 * 3
    assert g.stride == 4
    with pytest.raises(ValueError, match="multiples of 4"):
        g(torch.zeros(1, 1, 30, 32))
    with pytest.raises(ValueError):
        ResNetGenerator(upsample="pixelshuffle")


def test_zero_head_residual_generator_is_identity():
    g = ResNetGenerator(ngf=4, n_blocks=1).zero_head_().eval()
    x = torch.rand(1, 1, 16, 16) * 1.8 - 0.9
    with torch.no_grad():
        assert torch.equal(g(x), x)


def test_patchgan_logits_shape():
    d = make_discriminator(1, ndf=8, n_layers=3).eval()
    with torch.no_grad():
        out = d(torch.zeros(2, 1, 128, 128))
    assert isinstance(out, list)
    # 70x70 PatchGAN: three stride-2 4x4 convs then two stride-1 4x4 convs (padding 1) -> 14x14 logits at 128 px
    assert out[-1].shape == (2, 1, 14, 14)


def test_pairs_produce_every_image_of_a_step():
    cfg = TrainConfig.from_preset("cpu-small", manifest="m", out="o", ngf=4, n_blocks=1, ndf=4, d_window=False,
                                  d_condition="none")  # plain 1-channel discriminators
    gens, discs = GeneratorPair(cfg).eval(), DiscriminatorPair(cfg).eval()
    ld, fd = torch.rand(2, 1, 32, 32) - 0.5, torch.rand(3, 1, 32, 32) - 0.5
    with torch.no_grad():
        out = gens(ld, fd)
        assert set(out) == {"fake_fd", "fake_ld", "rec_ld", "rec_fd", "idt_fd", "idt_ld"}
        assert out["fake_fd"].shape == ld.shape and out["fake_ld"].shape == fd.shape
        assert torch.equal(out["fake_fd"], ld)  # init_identity: both generators start as the identity
        r_ld, f_ld, r_fd, f_fd = discs(ld, out["fake_ld"], fd, out["fake_fd"])
    assert r_ld.shape[0] == 2 and f_ld.shape[0] == 3 and r_fd.shape[0] == 3 and f_fd.shape[0] == 2
    assert "idt_fd" not in gens(ld, fd, identity=False)


def test_image_pool_fills_then_mixes_and_resumes_exactly():
    pool = ImagePool(4, seed=0)
    first = torch.arange(4.0).reshape(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: returned unchanged
    new = torch.full((64, 1, 1, 1), 100.0)
    out = pool.query(new)
    from_pool = (out < 100).sum().item()
    assert 0 < from_pool < 64 and out.shape == new.shape  # p = 0.5 per image: some old, some new
    state = pool.state_dict()
    twin = ImagePool(4, seed=123)
    twin.load_state_dict(state, torch.device("cpu"))
    nxt = torch.full((16, 1, 1, 1), 200.0)
    assert torch.equal(pool.query(nxt), twin.query(nxt.clone()))
    assert torch.equal(ImagePool(0, 0).query(nxt), nxt)


def test_lr_constant_then_linear_to_zero():
    assert [lr_factor(s, total=10, decay=4) for s in (0, 5, 6, 7, 8, 9, 10)] == [1, 1, 1, 0.75, 0.5, 0.25, 0.0]
    assert lr_factor(99, total=10, decay=0) == 1.0


@pytest.mark.parametrize("d_norm", ["instance", "batch", "none"])
def test_discriminator_norms_and_fakes_judged_in_mixed_batches(d_norm):
    cfg = TrainConfig.from_preset("cpu-small", manifest="m", out="o", ndf=4, d_norm=d_norm, patch_size=32,
                                  d_window=False, d_condition="none")
    torch.manual_seed(0)
    discs = DiscriminatorPair(cfg)
    norms = {type(m).__name__ for m in discs.modules() if "Norm" in type(m).__name__}
    assert norms == {"instance": {"InstanceNorm2d"}, "batch": {"BatchNorm2d"}, "none": set()}[d_norm]
    real, fake = torch.rand(2, 1, 32, 32) - 0.5, torch.rand(2, 1, 32, 32) - 0.5
    j_ld, _ = discs.judge_fakes(real, fake, real, fake)
    _, f_ld, _, _ = discs(real, fake, real, fake)
    alone = discs.d_ld(fake)[-1]
    assert torch.allclose(j_ld, f_ld, atol=1e-6)  # always the fake half of the real+fake batch ...
    # ... which for per-image norms is the same as judging the fakes alone; for batch norm it is not
    assert torch.allclose(j_ld, alone, atol=1e-5) == (d_norm != "batch")


def test_body_part_planes_follow_the_labels():
    images = torch.rand(4, 1, 8, 8)
    out = condition_planes(images, torch.tensor([0, 2, -1, 1]))
    assert out.shape == (4, 4, 8, 8) and torch.equal(out[:, :1], images)
    assert out[:, 1:, 3, 5].tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 0], [0, 1, 0]]  # C, N, unknown, L
    assert torch.equal(out[:, 1:].amax(dim=(2, 3)), out[:, 1:].amin(dim=(2, 3)))  # constant planes
    with pytest.raises(InputError, match="need the body part"):
        condition_planes(images, None)
    with pytest.raises(InputError, match="3 labels for 4 images"):
        condition_planes(images, torch.tensor([0, 1, 2]))


def test_conditioned_step_pools_fakes_with_their_source_body_part():
    cfg = TrainConfig.from_preset("cpu-small", manifest="m", out="o", ngf=4, n_blocks=1, ndf=4, patch_size=32,
                                  d_condition="body-part", d_window=False, pool_size=8)
    model = CycleGAN(cfg, torch.device("cpu"), total_steps=10, decay_steps=0)
    assert model.discs.d_fd.initial_conv.conv.in_channels == 4
    ld, fd = torch.rand(4, 1, 32, 32) - 0.6, torch.rand(4, 1, 32, 32) - 0.6
    ld_bp, fd_bp = torch.tensor([2, 2, 0, 0]), torch.tensor([1, 1, 1, -1])
    assert torch.isfinite(model.train_step(ld, fd, ld_bp, fd_bp)).all()
    pooled_fd = torch.cat(model.pool_fd.images)  # G(LD): judged as full dose of the LD patch's body part
    pooled_ld = torch.cat(model.pool_ld.images)  # F(FD): low dose of the FD patch's body part
    assert pooled_fd[:, 1:, 0, 0].tolist() == [[0, 0, 1], [0, 0, 1], [1, 0, 0], [1, 0, 0]]
    assert pooled_ld[:, 1:, 0, 0].tolist() == [[0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 0, 0]]
    # the label changes the verdict on the same image: the planes reach the logits
    d = model.discs.eval()
    with torch.no_grad():
        head, chest = d.d_fd(condition_planes(ld, ld_bp * 0 + 2))[-1], d.d_fd(condition_planes(ld, ld_bp * 0))[-1]
    assert not torch.allclose(head, chest)
    with pytest.raises(InputError, match="need the body part"):
        model.train_step(ld, fd)


def test_reading_window_view_uses_each_body_part_window():
    from ldct_monai.config import HUWindow
    from ldct_monai.metrics import LDCTBENCH_WINDOWS
    from ldct_monai.schema import body_part_of

    hu_window = HUWindow()
    unit = lambda hu: (hu + 1024.0) / 4095.0 * 2.0 - 1.0  # noqa: E731  network units of the full range
    for idx, code in enumerate("CLN"):
        w = LDCTBENCH_WINDOWS[body_part_of(code)]
        hu = torch.tensor([w.lower - 50, w.lower, w.center - 0.5, w.upper, w.upper + 50])
        out = reading_window_channel(unit(hu).view(1, 1, 1, -1), torch.tensor([idx]), hu_window)
        assert torch.allclose(out.view(-1), torch.tensor([-1.0, -1.0, 0.0, 1.0, 1.0]), atol=1e-4), code
    x = torch.rand(2, 1, 4, 4) * 2 - 1
    assert torch.equal(reading_window_channel(x, torch.tensor([-1, -1]), hu_window), x)  # unknown: unwindowed
    # head noise of 11 HU becomes ~50x larger in the head window than in network units
    head = reading_window_channel(unit(torch.tensor([40.0, 51.0])).view(1, 1, 1, 2), torch.tensor([2]), hu_window)
    assert float(head[0, 0, 0, 1] - head[0, 0, 0, 0]) > 50 * float(unit(torch.tensor(51.0)) - unit(torch.tensor(40.0)))
    cfg = TrainConfig.from_preset("cpu-small", manifest="m", out="o", ndf=4, d_window=True, d_condition="body-part")
    view = discriminator_view(x, torch.tensor([2, 0]), cfg)
    assert view.shape == (2, 5, 4, 4) and DiscriminatorPair(cfg).in_channels == 5
    assert torch.equal(view[:, 0:1], x) and view[0, 4].eq(1).all() and view[1, 2].eq(1).all()


def test_low_frequency_fidelity_ignores_noise_but_not_offsets():
    from ldct_monai.engine import low_frequency_l1

    g = torch.Generator().manual_seed(0)
    image = torch.nn.functional.avg_pool2d(torch.rand(4, 1, 72, 72, generator=g), 9, stride=1)  # smooth 64 x 64 "anatomy"
    sigma = 0.02
    noisy = image + sigma * torch.randn(image.shape, generator=g)
    shifted = image + sigma  # the same RMS change, as a global offset
    assert float(low_frequency_l1(image, image, 8)) == 0.0
    assert float(low_frequency_l1(noisy, image, 8)) < 0.15 * float(low_frequency_l1(shifted, image, 8))
    assert abs(float(low_frequency_l1(shifted, image, 8)) - sigma) < 1e-6  # an offset passes the pooling whole
    with pytest.raises(InputError, match=r"fidelity_pool \(128\) must be <= patch_size \(64\)"):
        TrainConfig.from_preset("cpu-small", lambda_fidelity_lf=1.0, fidelity_pool=128)
