"""The CycleGAN training engine: one loop for CPU, one GPU, or many (DDP via ``torchrun``).

:func:`train` takes a :class:`~ldct_monai.train_config.TrainConfig` and returns the run folder::

    RUN_DIR/config.json          the config (asdict), the source of truth for --resume
    RUN_DIR/checkpoints/         step_XXXXXXXX.pt, atomic, last K kept (ldct_monai.checkpoint)
    RUN_DIR/metrics.csv          train losses, lr, patches/s every log_every steps
    RUN_DIR/val_metrics.csv      val losses and flat-region noise of LD, G(LD), real FD (HU)
    RUN_DIR/previews/            PNG grids: LD, G(LD), F(G(LD)), FD, G(FD), G(F(FD))
    RUN_DIR/tb/                  TensorBoard scalars and images
    RUN_DIR/loss_curves.png      the curves of metrics.csv / val_metrics.csv
    RUN_DIR/run.json             what ran where: steps, world size, device, precision, replica check
    RUN_DIR/model/               the exported LD->FD generator + model card (ldct_monai.modelio)

The step follows Zhu et al.: generators first (LSGAN + cycle L1 x lambda + identity), discriminators
second on generated images drawn from a 50-image pool. Under DDP each pair of networks is one DDP
module called once per step, and ranks see disjoint shards of both streams; only rank 0 writes files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ldct_monai.checkpoint import load_latest, rng_state, save_checkpoint, set_rng_state
from ldct_monai.errors import InputError, OutputExistsError, TrainingDiverged
from ldct_monai.io_utils import atomic_write_text, check_output_dir
from ldct_monai.networks import NoiseGenerator, ResNetGenerator, make_discriminator
from ldct_monai.runtime import autocast, native_bf16, package_versions, resolve_device
from ldct_monai.schema import BODY_PARTS, SPLIT_FILES, BodyPart, Dose
from ldct_monai.train_config import RESUMABLE_CHANGES, TrainConfig, config_diff

if TYPE_CHECKING:
    from ldct_monai.monitor import Monitor

log = logging.getLogger(__name__)

LOSS_NAMES = ("loss_g", "adv_g", "cycle", "identity", "identity_l1", "loss_d", "d_ld", "d_fd", "fidelity_lf")
SUPERVISED_LOSS_NAMES = ("loss", "l1", "mse", "ssim")


# --------------------------------------------------------------------------------------------- modules
class GeneratorPair(nn.Module):
    """G: LD -> FD and F: FD -> LD; one forward computes every generated image of a step.

    F is a ResNet generator (Zhu et al.) or, with ``fd2ld: noise``, a :class:`NoiseGenerator` that adds fresh
    noise. A stochastic F cannot give back the noise of a given LD image, so then the forward cycle
    F(G(LD)) ~ LD and the identity images are not computed (their L1 would pull G towards the identity), and
    the backward cycle G(F(FD)) ~ FD reaches G only: F learns from D_ld alone.
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        self.noise = config.fd2ld == "noise"
        self.ld2fd = ResNetGenerator(**config.generator_kwargs)
        self.fd2ld: nn.Module = NoiseGenerator(len(BODY_PARTS)) if self.noise else ResNetGenerator(**config.generator_kwargs)
        # noise_source: ld-residual: F(FD) = FD + s_b (LD - G0(LD)), the step's own low-dose noise; G0 is G's
        # start, frozen (set by the engine from --init-generator; saved in checkpoints)
        self.residual = self.noise and config.noise_source == "ld-residual"
        if self.residual:
            self.start = ResNetGenerator(**config.generator_kwargs).requires_grad_(False)
            # F's own noise is not drawn in this mode (its measured levels stay for the log): no parameter
            # may be left without a gradient under DDP
            self.fd2ld.requires_grad_(False)
            self.register_buffer("residual_scale", torch.ones(len(BODY_PARTS) + 1))
        if config.init_identity:
            self.ld2fd.zero_head_()
            if not self.noise:
                self.fd2ld.zero_head_()

    def forward(self, ld: torch.Tensor, fd: torch.Tensor, identity: bool = True,
                fd_body_part: torch.Tensor | None = None, ld_body_part: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        fake_fd = self.ld2fd(ld)
        if self.residual:
            fake_ld = self.add_ld_residual(ld, fd, ld_body_part)
            return {"fake_fd": fake_fd, "fake_ld": fake_ld, "rec_fd": self.ld2fd(fake_ld)}
        if self.noise:
            fake_ld = self.fd2ld(fd, fd_body_part)
            return {"fake_fd": fake_fd, "fake_ld": fake_ld, "rec_fd": self.ld2fd(fake_ld.detach())}
        fake_ld = self.fd2ld(fd)
        out = {"fake_fd": fake_fd, "fake_ld": fake_ld, "rec_ld": self.fd2ld(fake_fd), "rec_fd": self.ld2fd(fake_ld)}
        if identity:
            out["idt_fd"] = self.ld2fd(fd)  # G(FD) should stay FD
            out["idt_ld"] = self.fd2ld(ld)  # F(LD) should stay LD
        return out

    @torch.no_grad()
    def add_ld_residual(self, ld: torch.Tensor, fd: torch.Tensor, ld_body_part: torch.Tensor | None) -> torch.Tensor:
        """``FD + s_b (LD - G0(LD))``: each FD patch gets the noise G0 removes from one LD patch of the step,
        scaled by ``s_b = sigma_add / sigma_LD`` of that LD patch's body part (the LD noise is all of sigma_LD;
        the FD already holds sigma_FD of it). LD patches are reused in turn when the FD batch is larger."""
        noise = ld - self.start(ld)
        index = self.fd2ld._index(ld, ld_body_part)  # body part -> index, unknown last (as F's levels)
        noise = noise * self.residual_scale[index].view(-1, 1, 1, 1).to(noise.dtype)
        if noise.shape[0] != fd.shape[0]:
            noise = noise[torch.arange(fd.shape[0], device=fd.device) % noise.shape[0]]
        return torch.clamp(fd + noise.to(fd.dtype), -1.0, 1.0)


def low_frequency_l1(output: torch.Tensor, source: torch.Tensor, pool: int) -> torch.Tensor:
    """L1 between ``pool`` x ``pool`` average-pooled ``output`` and ``source``: a fidelity term on what is not noise.

    CT noise is high-frequency; HU level and anatomy are not. Averaging over pool x pool pixels removes most
    of the noise and keeps both, so this term lets a generator remove noise but not shift intensities
    (the global offsets measured in docs/results.md section 6) or move structures.
    """
    f = torch.nn.functional.avg_pool2d
    return (f(output, pool) - f(source, pool)).abs().mean()


def condition_planes(images: torch.Tensor, body_part: torch.Tensor | None) -> torch.Tensor:
    """``images`` (B, C, H, W) with one constant plane per body part appended: (B, C + K, H, W).

    Plane k is 1 where the image's body part is ``BODY_PARTS[k]``, else 0 (all 0 for unknown = -1): the
    discriminator's question becomes "is this full-dose noise *for this body part*?" (conditional GAN,
    as pix2pix conditions its discriminator on the input). Needed because the body parts' noise levels
    overlap: head low dose (~22 HU) is quieter than abdomen full dose (~31 HU) in the Mayo data.
    """
    if body_part is None:
        raise InputError("body-part-conditioned discriminators need the body part of every patch (got none).")
    bp = body_part.to(images.device).view(-1)
    if bp.numel() != images.shape[0]:
        raise InputError(f"body-part condition: {bp.numel()} labels for {images.shape[0]} images.")
    onehot = torch.nn.functional.one_hot(bp.clamp(min=0), len(BODY_PARTS)) * (bp >= 0)[:, None]
    planes = onehot.to(images.dtype)[:, :, None, None].expand(-1, -1, *images.shape[-2:])
    return torch.cat([images, planes], dim=1)


def reading_window_channel(images: torch.Tensor, body_part: torch.Tensor | None, hu_window) -> torch.Tensor:
    """``images`` (B, 1, H, W, network units) seen through each one's body-part reading window, in [-1, 1].

    The windows are LDCTBench's (chest C -600/W 1500, abdomen C 50/W 400, head C 40/W 80, ``metrics``),
    the ones radiologists read noise in: in network units (4095 HU across [-1, 1]) head noise of 11 vs
    22 HU is 0.005 vs 0.011, while a skull edge is 0.5; through the head window the noise is 50x larger and
    the skull is clipped away. Unknown body parts (-1) pass unwindowed.
    """
    from ldct_monai.metrics import LDCTBENCH_WINDOWS

    if body_part is None:
        raise InputError("reading-window discriminators need the body part of every patch (got none).")
    to_unit = lambda hu: (hu - hu_window.low) / (hu_window.high - hu_window.low) * 2.0 - 1.0  # noqa: E731
    table = torch.tensor([[to_unit(w.lower), to_unit(w.upper)] for w in (LDCTBENCH_WINDOWS[b] for b in BodyPart)]
                         + [[-1.0, 1.0]], dtype=torch.float32, device=images.device)  # last row: unknown
    bp = body_part.to(images.device).view(-1)
    lo_hi = table[torch.where(bp >= 0, bp, len(BODY_PARTS))].to(images.dtype)
    lo, hi = lo_hi[:, 0, None, None, None], lo_hi[:, 1, None, None, None]
    return ((images - lo) / (hi - lo) * 2.0 - 1.0).clamp(-1.0, 1.0)


def discriminator_view(images: torch.Tensor, body_part: torch.Tensor | None, config: TrainConfig) -> torch.Tensor:
    """What the discriminators see of ``images``: the image, then (``d_window``) its reading-window view,
    then (``d_condition == "body-part"``) the one-hot body-part planes."""
    out = images
    if config.d_window:
        out = torch.cat([out, reading_window_channel(images, body_part, config.hu_window)], dim=1)
    if config.d_condition == "body-part":
        out = condition_planes(out, body_part)
    return out


def discriminator_channels(config: TrainConfig) -> int:
    """Input channels of the discriminators (see :func:`discriminator_view`)."""
    return 1 + int(config.d_window) + (len(BODY_PARTS) if config.d_condition == "body-part" else 0)


class DiscriminatorPair(nn.Module):
    """D_ld and D_fd (70x70 PatchGANs, MONAI ``PatchDiscriminator``); forward returns patch logits.

    Their inputs are :func:`discriminator_view` of the images (built by the caller): the image, its
    reading-window view (``d_window``) and body-part planes (``d_condition``).
    """

    def __init__(self, config: TrainConfig) -> None:
        super().__init__()
        norm = {"instance": "INSTANCE", "batch": "BATCH", "none": None}[config.d_norm]
        self.in_channels = discriminator_channels(config)
        self.d_ld = make_discriminator(self.in_channels, config.ndf, config.d_layers, norm)
        self.d_fd = make_discriminator(self.in_channels, config.ndf, config.d_layers, norm)
        # Batch norm normalises by the statistics of the whole batch: a batch of fakes alone would be judged
        # against itself. So with batch norm, fakes are always judged in a batch mixed with real images.
        self.mixed_batches = config.d_norm == "batch"

    def judge_fakes(self, real_ld: torch.Tensor, fake_ld: torch.Tensor, real_fd: torch.Tensor, fake_fd: torch.Tensor,
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch logits of D_ld(fake_ld) and D_fd(fake_fd) for the generator loss (reals only as batch context)."""
        if not self.mixed_batches:
            return self.d_ld(fake_ld)[-1], self.d_fd(fake_fd)[-1]
        _, f_ld, _, f_fd = self.forward(real_ld, fake_ld, real_fd, fake_fd)
        return f_ld, f_fd

    def forward(self, real_ld: torch.Tensor, fake_ld: torch.Tensor, real_fd: torch.Tensor, fake_fd: torch.Tensor,
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        # Real and fake go through each discriminator as one batch: one forward, same instance-norm stats per image.
        n_ld, n_fd = real_ld.shape[0], real_fd.shape[0]
        out_ld = self.d_ld(torch.cat([real_ld, fake_ld]))[-1]
        out_fd = self.d_fd(torch.cat([real_fd, fake_fd]))[-1]
        return out_ld[:n_ld], out_ld[n_ld:], out_fd[:n_fd], out_fd[n_fd:]


class ImagePool:
    """Buffer of previously generated images (Zhu et al.): the discriminator sees a history, not just the latest.

    ``query`` returns, per image, either the new image or (p = 0.5, once the pool is full) a stored one,
    which is replaced by the new image. Draws use the pool's own generator, saved with its state.
    """

    def __init__(self, size: int, seed: int) -> None:
        self.size = int(size)
        self.images: list[torch.Tensor] = []
        self.gen = torch.Generator().manual_seed(int(seed))

    def query(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for img in images.detach():
            img = img[None]
            if len(self.images) < self.size:
                self.images.append(img.clone())
                out.append(img)
            elif torch.rand((), generator=self.gen).item() < 0.5:
                i = int(torch.randint(self.size, (), generator=self.gen).item())
                out.append(self.images[i].clone())
                self.images[i] = img.clone()
            else:
                out.append(img)
        return torch.cat(out)

    def state_dict(self) -> dict[str, Any]:
        imgs = torch.cat(self.images).cpu() if self.images else torch.empty(0)
        return {"images": imgs, "rng": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        imgs = state["images"]
        self.images = [imgs[i : i + 1].to(device) for i in range(imgs.shape[0])] if imgs.numel() else []
        self.gen.set_state(state["rng"])


def lr_factor(step: int, total: int, decay: int) -> float:
    """Constant learning rate, then linear decay to 0 over the last ``decay`` of ``total`` steps (Zhu et al.)."""
    start = total - decay
    if decay <= 0 or step < start:
        return 1.0
    return max(0.0, 1.0 - (step - start) / decay)


def _set_requires_grad(module: nn.Module, flag: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(flag)


def _backward_step(scaler: torch.amp.GradScaler, loss: torch.Tensor, opt: torch.optim.Optimizer,
                   params, clip: float, freeze: nn.Module | None = None) -> None:
    """Scaled backward, optional gradient-norm clipping (on unscaled gradients), optimizer step.

    ``freeze``: a module whose gradients are dropped after the backward (under DDP, after their all-reduce),
    so the optimizer step leaves it exactly as it was.
    """
    scaler.scale(loss).backward()
    if freeze is not None:
        for p in freeze.parameters():
            p.grad = None
    if clip > 0:
        scaler.unscale_(opt)
        nn.utils.clip_grad_norm_(params, clip)
    scaler.step(opt)


def _checksum(*modules: nn.Module) -> str:
    """SHA-256 (16 hex digits) over every parameter of ``modules``: equal on in-sync DDP replicas."""
    h = hashlib.sha256()
    for module in modules:
        for name, p in module.named_parameters():
            h.update(name.encode() + p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _unwrap(module: nn.Module) -> nn.Module:
    module = getattr(module, "_orig_mod", module)  # torch.compile
    return getattr(module, "module", module)  # DDP


# --------------------------------------------------------------------------------------------- the model
def generator_average(generator: nn.Module, decay: float) -> nn.Module | None:
    """An exponential moving average of ``generator``'s weights (``ema_decay`` > 0), or None.

    ``torch.optim.swa_utils.AveragedModel`` with its EMA function: after each step
    ``avg = decay * avg + (1 - decay) * weights``; the first update copies the weights. The average is what
    validation scores and the run exports (Yazici et al. 2019, "The unusual effectiveness of averaging in GAN
    training"): it follows the generator without the step-to-step swings of adversarial training.
    """
    if decay <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(generator, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True).requires_grad_(False)


def _averaged_or(average: nn.Module | None, live: nn.Module) -> nn.Module:
    """The averaged generator once it has been updated, else the live one (step 0: the start itself)."""
    if average is not None and int(average.n_averaged) > 0:
        return average.module
    return live


def _average_state(average: nn.Module | None) -> dict[str, Any]:
    return {"ema": average.state_dict()} if average is not None else {}


def _load_average(average: nn.Module | None, state: dict[str, Any]) -> None:
    if average is not None:
        average.load_state_dict(state["ema"])


class CycleGAN:
    """Networks, optimizers, schedulers, scaler and pools of one rank, and its training step.

    Args:
        config: the training config.
        device: where to train.
        total_steps: schedule length in optimizer steps (lr decays to 0 there).
        decay_steps: steps of linear lr decay at the end of the schedule.
        rank / world_size: DDP coordinates; with ``world_size > 1`` the networks are DDP-wrapped
            (the process group must be initialised).
    """

    loss_names = LOSS_NAMES
    progress_keys = ("loss_g", "loss_d", "cycle")

    def __init__(self, config: TrainConfig, device: torch.device, total_steps: int, decay_steps: int,
                 rank: int = 0, world_size: int = 1) -> None:
        from monai.losses import PatchAdversarialLoss, SSIMLoss

        self.config = config
        self.device = device
        self.rank, self.world_size = rank, world_size
        torch.manual_seed(config.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        self.gens = GeneratorPair(config).to(device)
        self.noise_prior = None
        if config.fd2ld == "noise" and not config.resume:  # resumed runs load F from the checkpoint
            from ldct_monai.noise_prior import calibrate

            self.noise_prior = calibrate(self.gens.fd2ld, Path(config.manifest), config)  # the same slices on every rank
        self.discs = DiscriminatorPair(config).to(device)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        if config.channels_last:
            self.gens.to(memory_format=torch.channels_last)
            self.discs.to(memory_format=torch.channels_last)
        self.gens_run: nn.Module = self.gens
        self.discs_run: nn.Module = self.discs
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [device.index] if device.type == "cuda" else None
            self.gens_run = DDP(self.gens, device_ids=ids)
            self.discs_run = DDP(self.discs, device_ids=ids)
        if config.compile:
            self.gens_run = torch.compile(self.gens_run)
            self.discs_run = torch.compile(self.discs_run)
        betas = (config.beta1, config.beta2)
        groups: Any = self.gens.parameters()  # one group: checkpoints of earlier runs keep resuming
        if config.fd2ld == "noise":  # F's few parameters move at their own lr
            groups = [{"params": self.gens.ld2fd.parameters()}, {"params": self.gens.fd2ld.parameters(), "lr": config.noise_lr}]
        self.opt_g = torch.optim.Adam(groups, lr=config.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.discs.parameters(), lr=config.lr, betas=betas)
        sched = lambda s: lr_factor(s, total_steps, decay_steps)  # noqa: E731 (a function: not pickled into checkpoints)
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, sched)
        self.sched_d = torch.optim.lr_scheduler.LambdaLR(self.opt_d, sched)
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        self.pool_ld = ImagePool(config.pool_size, config.seed * 1000 + 2 * rank)
        self.pool_fd = ImagePool(config.pool_size, config.seed * 1000 + 2 * rank + 1)
        self.adv = PatchAdversarialLoss(criterion="least_squares", no_activation_leastsq=True)  # plain LSGAN (Mao et al.)
        self.ssim = SSIMLoss(spatial_dims=2, data_range=2.0)  # 1 - SSIM on [-1, 1] images
        self.l1 = nn.L1Loss()
        self.average = generator_average(self.gens.ld2fd, config.ema_decay)

    @property
    def generator(self) -> ResNetGenerator:
        """The LD -> FD generator (unwrapped) that is validated and exported: its moving average with
        ``ema_decay`` > 0 (from the first step on), else the trained one."""
        return _averaged_or(self.average, self.gens.ld2fd)

    def start_from(self, state: dict[str, torch.Tensor]) -> None:
        """Start G from trained weights (``--init-generator``). With ``noise_source: ld-residual`` they are
        also G0, frozen, and the residual's scale per body part is measured with G0 on the prior's slices."""
        self.gens.ld2fd.load_state_dict(state)
        if self.gens.residual:
            self.gens.start.load_state_dict(state)
            if self.noise_prior is not None:
                from ldct_monai.noise_prior import residual_scales

                self.gens.residual_scale.copy_(residual_scales(self.noise_prior, self.gens.start, self.config.hu_window))

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def _cond(self, images: torch.Tensor, body_part: torch.Tensor | None) -> torch.Tensor:
        """What the discriminators see: the images, plus body-part planes when they are conditioned."""
        if discriminator_channels(self.config) == 1:
            return images
        return discriminator_view(images, body_part, self.config).contiguous(memory_format=self.memory_format)

    def train_step(self, ld: torch.Tensor, fd: torch.Tensor, ld_body_part: torch.Tensor | None = None,
                   fd_body_part: torch.Tensor | None = None) -> torch.Tensor:
        """One optimizer step of both generators and both discriminators.

        ``ld_body_part`` / ``fd_body_part`` ((B,) indices into ``BODY_PARTS``) are needed only with
        body-part-conditioned discriminators. G(LD) keeps its LD patch's body part, F(FD) its FD patch's.

        Returns:
            The step's losses as one detached float32 tensor in the order of :data:`LOSS_NAMES`
            (no host sync here; the caller decides when to read it).
        """
        cfg = self.config
        ld, fd = self._prep(ld), self._prep(fd)
        # --- generators: fool both discriminators, cycle back, keep images of their own target domain ---
        _set_requires_grad(self.discs, False)
        self.opt_g.zero_grad(set_to_none=True)
        use_identity = cfg.lambda_identity > 0 or cfg.lambda_identity_l1 > 0
        # Warm-up (fine-tuning from a trained generator): the first d_warmup_steps train only the
        # discriminators, so the generators' first adversarial gradients come from a discriminator that has
        # learnt something, not from a random one (measured: from ldct-denoiser-v1 without it, the val gain fell
        # from +3.8 to +2.1 dB in 50 steps).
        update_g = self.sched_d.last_epoch >= cfg.d_warmup_steps
        with torch.set_grad_enabled(update_g), autocast(self.device, cfg.precision):
            out = self.gens_run(ld, fd, identity=use_identity, fd_body_part=fd_body_part, ld_body_part=ld_body_part)
            c_ld, c_fd = self._cond(ld, ld_body_part), self._cond(fd, fd_body_part)
            j_ld, j_fd = _unwrap(self.discs).judge_fakes(c_ld, self._cond(out["fake_ld"], fd_body_part),
                                                         c_fd, self._cond(out["fake_fd"], ld_body_part))
            adv_g = (cfg.lambda_adv_fd * self.adv(j_fd.float(), target_is_real=True, for_discriminator=False)
                     + self.adv(j_ld.float(), target_is_real=True, for_discriminator=False))
        # Image losses in fp32: SSIM of low-contrast CT patches is not safe in bf16.
        o = {k: v.float() for k, v in out.items()}
        cycle = self.l1(o["rec_fd"], fd) + (self.l1(o["rec_ld"], ld) if "rec_ld" in o else 0.0)
        zero = cycle.new_zeros(())
        identity = (self.ssim(o["idt_fd"], fd) + self.ssim(o["idt_ld"], ld)) if cfg.lambda_identity > 0 else zero
        identity_l1 = (self.l1(o["idt_fd"], fd) + self.l1(o["idt_ld"], ld)) if cfg.lambda_identity_l1 > 0 else zero
        fidelity_lf = (low_frequency_l1(o["fake_fd"], ld, cfg.fidelity_pool) + low_frequency_l1(o["fake_ld"], fd, cfg.fidelity_pool)
                       ) if cfg.lambda_fidelity_lf > 0 else zero
        loss_g = (adv_g + cfg.lambda_cycle * cycle + cfg.lambda_identity * identity + cfg.lambda_identity_l1 * identity_l1
                  + cfg.lambda_fidelity_lf * fidelity_lf)
        if update_g:
            # G warm-up: G keeps its start (no gradient, so Adam leaves it untouched) while F and the
            # discriminators learn; with fd2ld: noise, G's first cycle pairs then carry noise like the site's LD.
            freeze = self.gens.ld2fd if self.sched_d.last_epoch < cfg.ld2fd_warmup_steps else None
            _backward_step(self.scaler, loss_g, self.opt_g, self.gens.parameters(), cfg.grad_clip, freeze=freeze)
        if self.average is not None:  # every step, warm-ups included (G unchanged then: the average stays its start)
            self.average.update_parameters(self.gens.ld2fd)
        # --- discriminators: real vs pooled fakes, halved as in Zhu et al. ---
        _set_requires_grad(self.discs, True)
        self.opt_d.zero_grad(set_to_none=True)
        # The pools keep each fake as its discriminator view (window channel, body-part planes): a pooled image
        # is judged with its own body part.
        fake_ld = self.pool_ld.query(self._cond(out["fake_ld"].detach(), fd_body_part))
        fake_fd = self.pool_fd.query(self._cond(out["fake_fd"].detach(), ld_body_part))
        with autocast(self.device, cfg.precision):
            r_ld, f_ld, r_fd, f_fd = self.discs_run(c_ld, fake_ld, c_fd, fake_fd)
        d_ld = 0.5 * (self.adv(r_ld.float(), True, True) + self.adv(f_ld.float(), False, True))
        d_fd = 0.5 * (self.adv(r_fd.float(), True, True) + self.adv(f_fd.float(), False, True))
        loss_d = d_ld + d_fd
        _backward_step(self.scaler, loss_d, self.opt_d, self.discs.parameters(), cfg.grad_clip)
        self.scaler.update()
        with warnings.catch_warnings():  # in warm-up the G schedule advances without an optimizer step, on purpose
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
            self.sched_g.step()
        self.sched_d.step()
        return torch.stack([loss_g, adv_g, cycle, identity, identity_l1, loss_d, d_ld, d_fd, fidelity_lf]).detach().float()

    @torch.no_grad()
    def validate(self, val: dict[str, list[torch.Tensor]], window) -> tuple[dict[str, float], list]:
        """Losses and flat-region noise (HU) on fixed full val slices; also the panels of the first pair.

        Unpaired val has no ground truth: ``noise_g_ld`` (noise of G(LD)) is compared with ``noise_ld``
        (its input) and ``noise_fd`` (real full-dose images of other patients).
        """
        g, f = self.generator, self.gens.fd2ld
        dd = self.discs
        dd.eval()  # batch-norm discriminators: judge with running statistics and leave them untouched
        devices = [self.device] if self.device.type == "cuda" else []
        try:  # a noise F draws from the global RNG: validation must not move the training's draws (exact resume)
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(self.config.seed)
                return self._validate(val, window, g, f, dd)
        finally:
            dd.train()

    def _validate(self, val, window, g, f, dd) -> tuple[dict[str, float], list]:
        from ldct_monai.monitor import flat_noise_std

        sums: dict[str, list[float]] = {k: [] for k in ("cycle", "identity", "adv_g", "noise_ld", "noise_g_ld", "noise_fd")}
        panels: list = []
        ld_parts = val.get("ld_body_part") or [None] * len(val.get("ld", []))
        for i, (ld, part) in enumerate(zip(val.get("ld", []), ld_parts, strict=True)):
            ld = self._prep(ld)
            with autocast(self.device, self.config.precision):
                fake_fd = g(ld)
                rec_ld = f(fake_fd)
                adv = dd.d_fd(self._cond(fake_fd, part))[-1]
            fake_fd, rec_ld = fake_fd.float(), rec_ld.float()
            sums["cycle"].append(self.l1(rec_ld, ld).item())
            sums["adv_g"].append(self.adv(adv.float(), True, False).item())
            sums["noise_ld"].append(flat_noise_std(window.to_hu(ld.cpu().numpy()[0, 0])))
            sums["noise_g_ld"].append(flat_noise_std(window.to_hu(fake_fd.cpu().numpy()[0, 0])))
            if i == 0:
                panels += [("LD", ld), ("G(LD)", fake_fd), ("F(G(LD))", rec_ld)]
        for i, fd in enumerate(val.get("fd", [])):
            fd = self._prep(fd)
            with autocast(self.device, self.config.precision):
                idt = g(fd)
                rec_fd = g(f(fd))
            idt, rec_fd = idt.float(), rec_fd.float()
            sums["identity"].append(self.ssim(idt, fd).item())
            sums["cycle"].append(self.l1(rec_fd, fd).item())
            sums["noise_fd"].append(flat_noise_std(window.to_hu(fd.cpu().numpy()[0, 0])))
            if i == 0:
                panels += [("FD", fd), ("G(FD)", idt), ("G(F(FD))", rec_fd)]
        out = {}
        for k, v in sums.items():
            finite = [x for x in v if math.isfinite(x)]
            out[k] = sum(finite) / len(finite) if finite else float("nan")
        if isinstance(f, NoiseGenerator):  # the level F adds per body part (HU, before its HU dependence)
            levels = f.log_amplitude.detach().float().exp().cpu() * (self.config.hu_high - self.config.hu_low) / 2.0
            out.update({f"f_noise_hu_{part}": float(levels[i]) for i, part in enumerate(BODY_PARTS)})
        if val.get("pair_ld"):  # simulated data has twins: the unpaired model is also scored against them
            g.eval()
            try:
                paired, _ = paired_validation(g, val["pair_ld"], val["pair_fd"], self._prep, self.device,
                                              self.config.precision)
            finally:
                g.train()
            out.update(paired)
        return out, panels

    def state_dict(self) -> dict[str, Any]:
        return {
            "gens": self.gens.state_dict(), "discs": self.discs.state_dict(),
            "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
            "sched_g": self.sched_g.state_dict(), "sched_d": self.sched_d.state_dict(),
            "scaler": self.scaler.state_dict(),
            "pool_ld": self.pool_ld.state_dict(), "pool_fd": self.pool_fd.state_dict(),
            **_average_state(self.average),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gens.load_state_dict(state["gens"])
        self.discs.load_state_dict(state["discs"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.sched_g.load_state_dict(state["sched_g"])
        self.sched_d.load_state_dict(state["sched_d"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.pool_ld.load_state_dict(state["pool_ld"], self.device)
        self.pool_fd.load_state_dict(state["pool_fd"], self.device)
        _load_average(self.average, state)

    def param_checksum(self) -> str:
        """SHA-256 (16 hex digits) over every parameter of all four networks: equal on in-sync DDP replicas.

        Buffers are left out: batch-norm running statistics never enter a training step (train mode uses
        batch statistics); they serve rank-0 validation only, and DDP re-broadcasts rank 0's each step.
        """
        return _checksum(self.gens, self.discs)


def paired_validation(gen: nn.Module, lds: list[torch.Tensor], fds: list[torch.Tensor], prep, device: torch.device,
                      precision: str) -> tuple[dict[str, float], list]:
    """Mean L1 and PSNR (dB, full HU window, peak-to-peak 2 in [-1, 1]) of LD and G(LD) against their FD
    twins: ``{"l1", "psnr_ld", "psnr_g_ld", "gain_db"}`` (empty without pairs), and the first pair's panels."""
    psnr_in, psnr_out, l1s, panels = [], [], [], []
    for i, (ld, fd) in enumerate(zip(lds, fds, strict=True)):
        ld, fd = prep(ld), prep(fd)
        with autocast(device, precision):
            out = gen(ld)
        out = out.float()
        l1s.append((out - fd).abs().mean().item())
        for dst, x in ((psnr_in, ld), (psnr_out, out)):
            mse = ((x - fd) ** 2).mean().item()
            dst.append(10 * math.log10(4.0 / max(mse, 1e-12)))
        if i == 0:
            panels += [("LD", ld), ("G(LD)", out), ("FD", fd)]
    if not l1s:
        return {}, panels
    mean = lambda v: sum(v) / len(v)  # noqa: E731
    return {"l1": mean(l1s), "psnr_ld": mean(psnr_in), "psnr_g_ld": mean(psnr_out),
            "gain_db": mean(psnr_out) - mean(psnr_in)}, panels


class Supervised:
    """The LD -> FD generator trained on paired patches (``method="supervised"``): same step interface as
    :class:`CycleGAN` (networks, optimizer, schedule, scaler, state, checksum), so :func:`train` runs both.

    The loss is ``supervised_loss`` between G(LD) and the FD patch of the same place: L1, MSE, or
    L1 + 0.2 x (1 - SSIM). No discriminators, no pools.
    """

    loss_names = SUPERVISED_LOSS_NAMES
    progress_keys = ("loss", "l1")

    def __init__(self, config: TrainConfig, device: torch.device, total_steps: int, decay_steps: int,
                 rank: int = 0, world_size: int = 1) -> None:
        from monai.losses import SSIMLoss

        self.config, self.device = config, device
        self.rank, self.world_size = rank, world_size
        torch.manual_seed(config.seed)
        self.gen = ResNetGenerator(**config.generator_kwargs).to(device)
        if config.init_identity:
            self.gen.zero_head_()
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        if config.channels_last:
            self.gen.to(memory_format=torch.channels_last)
        self.gen_run: nn.Module = self.gen
        if world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.gen_run = DDP(self.gen, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:
            self.gen_run = torch.compile(self.gen_run)
        self.opt_g = torch.optim.Adam(self.gen.parameters(), lr=config.lr, betas=(config.beta1, config.beta2))
        self.sched_g = torch.optim.lr_scheduler.LambdaLR(self.opt_g, lambda s: lr_factor(s, total_steps, decay_steps))
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        self.ssim = SSIMLoss(spatial_dims=2, data_range=2.0)
        self.average = generator_average(self.gen, config.ema_decay)

    @property
    def generator(self) -> ResNetGenerator:
        return _averaged_or(self.average, self.gen)

    def start_from(self, state: dict[str, torch.Tensor]) -> None:
        """Start the generator from trained weights (``--init-generator``)."""
        self.gen.load_state_dict(state)

    def _prep(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.device, non_blocking=True).contiguous(memory_format=self.memory_format)

    def train_step(self, ld: torch.Tensor, fd: torch.Tensor, ld_body_part: torch.Tensor | None = None,
                   fd_body_part: torch.Tensor | None = None) -> torch.Tensor:
        """One optimizer step on a paired batch; returns the losses in the order of :data:`SUPERVISED_LOSS_NAMES`."""
        cfg = self.config
        ld, fd = self._prep(ld), self._prep(fd)
        self.opt_g.zero_grad(set_to_none=True)
        with autocast(self.device, cfg.precision):
            out = self.gen_run(ld)
        out = out.float()  # losses in fp32 (SSIM of low-contrast patches is not safe in bf16)
        l1 = (out - fd).abs().mean()
        mse = ((out - fd) ** 2).mean()
        zero = l1.new_zeros(())
        ssim = self.ssim(out, fd) if cfg.supervised_loss == "l1+ssim" else zero
        loss = {"l1": l1, "mse": mse, "l1+ssim": l1 + 0.2 * ssim}[cfg.supervised_loss]
        _backward_step(self.scaler, loss, self.opt_g, self.gen.parameters(), cfg.grad_clip)
        self.scaler.update()
        self.sched_g.step()
        if self.average is not None:
            self.average.update_parameters(self.gen)
        return torch.stack([loss, l1, mse, ssim]).detach().float()

    @torch.no_grad()
    def validate(self, val: dict[str, list[torch.Tensor]], window) -> tuple[dict[str, float], list]:
        """PSNR (dB, full HU window) of LD and G(LD) against their FD twins on the fixed val pairs, and L1."""
        gen = self.generator
        gen.eval()
        try:
            return paired_validation(gen, val.get("ld", []), val.get("fd", []), self._prep, self.device,
                                     self.config.precision)
        finally:
            gen.train()

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.state_dict(), "opt_g": self.opt_g.state_dict(), "sched_g": self.sched_g.state_dict(),
                "scaler": self.scaler.state_dict(), **_average_state(self.average)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.load_state_dict(state["gen"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.sched_g.load_state_dict(state["sched_g"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        _load_average(self.average, state)

    def param_checksum(self) -> str:
        return _checksum(self.gen)


def init_generator_state(spec: str, config: TrainConfig) -> tuple[dict[str, torch.Tensor], str]:
    """Weights to start the LD -> FD generator from (``--init-generator builtin|PATH``) and a description.

    Raises:
        InputError: no such model, or its architecture differs from the run's (``--ngf``, ``--n-blocks``...).
    """
    from ldct_monai.modelio import load_model
    from ldct_monai.models import builtin_model_dir

    path = builtin_model_dir() if spec == "builtin" else Path(spec)
    loaded = load_model(path)
    arch = loaded.card["architecture"]["kwargs"]
    if {"norm": "instance", **arch} != {"norm": "instance", **config.generator_kwargs}:
        raise InputError(f"--init-generator {spec}: its generator is {arch}, the run's is {config.generator_kwargs}; "
                         "set --ngf / --n-blocks (and g_norm, upsample, residual in a --config file) to match.")
    if loaded.hu_window != config.hu_window:
        raise InputError(f"--init-generator {spec}: HU window {loaded.hu_window} differs from the run's {config.hu_window}.")
    return loaded.generator.state_dict(), f"{loaded.name} ({loaded.path}, card {loaded.card_hash})"


# --------------------------------------------------------------------------------------------- the run
def _select_best(best: dict[str, Any], step: int, val: dict[str, float], generator: nn.Module, by: str) -> dict[str, Any]:
    """Keep the generator of the best validation so far (``model_select``); the earliest step wins ties.

    * ``val-pairs``: the highest paired PSNR gain of G(LD) over LD on the val twins (``val_pairs.csv`` of a
      ``build-manifest --paired`` manifest; simulated data has them). Step 0 takes part, so a fine-tuned
      model is never exported worse on val than the generator it started from.
    * ``val-noise``: unpaired validation has no ground truth; the no-reference score is
      |noise(G(LD)) - noise(FD)| in HU: the goal of LD -> FD is FD's noise level, neither more (not
      denoised) nor less (over-smoothed).

    Returns:
        ``best`` unchanged, or a new record {step, score, val, state} when this validation is better (lower score).
    """
    if by == "val-pairs":
        score = -float(val.get("gain_db", math.nan))
    else:
        score = abs(float(val.get("noise_g_ld", math.nan)) - float(val.get("noise_fd", math.nan)))
    if not math.isfinite(score) or (best and score >= best["score"]):
        return best
    state = {k: v.detach().to("cpu", copy=True) for k, v in generator.state_dict().items()}
    return {"step": int(step), "score": score, "val": {k: float(v) for k, v in val.items()}, "state": state}


def _dist_setup(config: TrainConfig) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); initialises the process group when launched by torchrun with > 1 process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(config.device)
    if world > 1:
        import torch.distributed as dist

        if device.type == "cuda":
            device = torch.device("cuda", local)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world, device


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        dist.barrier()


def _prepare_run_dir(config: TrainConfig) -> TrainConfig:
    """Check/create RUN_DIR; on resume, check the config against the saved one. Returns the config to use."""
    run_dir = Path(config.out)
    saved_path = run_dir / "config.json"
    if config.resume:
        if not saved_path.is_file():
            raise InputError(f"{run_dir}: nothing to resume (no config.json; start without --resume).")
        try:
            saved = TrainConfig.from_dict(json.loads(saved_path.read_text()), source=str(saved_path))
        except ValueError as err:
            raise InputError(f"{saved_path}: unreadable ({err}).") from err
        changed = {k: v for k, v in config_diff(saved, config).items() if k not in RESUMABLE_CHANGES | {"resume", "overwrite"}}
        if changed:
            listing = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changed.items()))
            raise InputError(f"{run_dir}: --resume cannot change fields that alter training ({listing}).")
        return config
    if run_dir.is_dir() and any(run_dir.iterdir()):
        if not config.overwrite:
            raise OutputExistsError(f"{run_dir}: run folder exists and is not empty (use --resume to continue it or "
                                    "--overwrite to start over).")
        shutil.rmtree(run_dir)
    check_output_dir(run_dir, overwrite=False)
    run_dir.mkdir(parents=True, exist_ok=True)
    return config


def _save_config(config: TrainConfig) -> None:
    state = {k: v for k, v in asdict(config).items()}
    state["resume"], state["overwrite"] = False, False
    atomic_write_text(Path(config.out) / "config.json", json.dumps(state, indent=2) + "\n")


def _all_gather(obj: Any, world: int) -> list:
    """``obj`` of every rank, in rank order (``[obj]`` without DDP)."""
    if world == 1:
        return [obj]
    import torch.distributed as dist

    gathered: list = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered


def _prepare(config: TrainConfig, rank: int, world: int) -> TrainConfig:
    """Rank 0 checks/creates RUN_DIR (and writes config.json for a new run); every rank learns whether it worked.

    Raises:
        InputError, OutputExistsError: as :func:`_prepare_run_dir`; on the other ranks, an InputError naming
            rank 0's problem (they would otherwise wait at the next collective for ever).
    """
    problem: BaseException | None = None
    if rank == 0:
        try:
            config = _prepare_run_dir(config)
            if not config.resume:
                _save_config(config)
        except BaseException as err:  # re-raised below, after telling the other ranks (no hang at a barrier)
            problem = err
    if world > 1:
        import torch.distributed as dist

        shared = [str(problem) if problem is not None else None]
        dist.broadcast_object_list(shared, src=0)
        if shared[0] is not None and problem is None:
            raise InputError(f"rank 0 could not prepare {Path(config.out)}: {shared[0]}")
    if problem is not None:
        raise problem
    return config


@dataclass(frozen=True)
class Run:
    """What resume, checkpointing, validation and export need to know about a run of this process.

    ``total`` is the schedule length in optimizer steps (the lr reaches 0 there), ``stop`` the step this
    session stops at (``max_steps``), ``manifest_hash`` the hash of the manifest's split files.
    """

    config: TrainConfig
    run_dir: Path
    rank: int
    world: int
    device: torch.device
    steps_per_epoch: int
    manifest_hash: str
    total: int
    stop: int


def resume_run(run: Run, model: CycleGAN | Supervised) -> tuple[int, dict[str, Any]]:
    """Load the newest loadable checkpoint of ``run.run_dir`` into ``model`` and this rank's RNGs.

    Returns:
        The step to continue from and the best-model record of ``model_select`` (empty for ``last``).

    Raises:
        InputError: no checkpoint, or the manifest changed since it was written (steps per epoch or hash).
    """
    path, state = load_latest(run.run_dir, map_location="cpu")
    if state.get("steps_per_epoch") != run.steps_per_epoch or state.get("manifest_hash") != run.manifest_hash:
        raise InputError(f"{path}: the manifest changed since this checkpoint (steps/epoch "
                         f"{state.get('steps_per_epoch')} -> {run.steps_per_epoch}, hash {state.get('manifest_hash')} "
                         f"-> {run.manifest_hash}).")
    model.load_state_dict(state)
    set_rng_state(state["rng"][run.rank] if run.rank < len(state["rng"]) else state["rng"][0])
    step = int(state["step"])
    if run.rank == 0:
        log.info("Resuming %s from %s (step %d of %d).", run.run_dir, path.name, step, run.stop)
    return step, dict(state.get("best_model") or {})


def write_checkpoint(run: Run, model: CycleGAN | Supervised, step: int, best: dict[str, Any]) -> None:
    """Write ``RUN_DIR/checkpoints/step_<step>.pt`` (rank 0) with every rank's RNG state; keep the last K.

    Every rank must call it (the RNG states are gathered).
    """
    rngs = _all_gather(rng_state(), run.world)
    if run.rank == 0:
        save_checkpoint(run.run_dir, step, {**model.state_dict(), "rng": rngs, "config": asdict(run.config),
                                        "epoch": step // run.steps_per_epoch, "steps_per_epoch": run.steps_per_epoch,
                                        "manifest_hash": run.manifest_hash, "best_model": best},
                        keep=run.config.keep_checkpoints)


class Validation:
    """Validation on rank 0: the fixed val slices, the figures of the last pass, and the model selection.

    The CycleGAN is validated on ``val_ld`` / ``val_fd`` slices (and scored on the ``val_pairs.csv`` twins when
    the manifest has them), the supervised generator on the val pairs. ``best`` is the record of
    :func:`_select_best` for ``model_select`` other than ``last``; it is saved in every checkpoint.
    """

    def __init__(self, run: Run, monitor: Monitor | None, best: dict[str, Any]) -> None:
        from ldct_monai.data import val_pair_slices, val_slices

        config, manifest = run.config, Path(run.config.manifest)
        supervised = config.method == "supervised"
        self.config, self.monitor, self.best = config, monitor, best
        self.last: dict[str, float] = {}
        self.slices = ((val_pair_slices if supervised else val_slices)(manifest, config)) if run.rank == 0 else {}
        if run.rank == 0 and not supervised and (manifest / SPLIT_FILES["val_pairs"]).is_file():
            pairs_val = val_pair_slices(manifest, config)  # the unpaired model, scored on val twins
            self.slices["pair_ld"], self.slices["pair_fd"] = pairs_val["ld"], pairs_val["fd"]

    def __call__(self, model: CycleGAN | Supervised, step: int) -> None:
        """Validate ``model`` at ``step``: log the figures and panels, keep the generator if it is the best so far."""
        if self.monitor is None or not (self.slices.get("ld") or self.slices.get("fd")):
            return
        self.last, panels = model.validate(self.slices, self.config.hu_window)
        self.monitor.scalars(step, self.last, prefix="val")
        if panels:
            self.monitor.images(step, panels)
        if self.config.model_select != "last":
            self.best = _select_best(self.best, step, self.last, model.generator, self.config.model_select)


def export_generator(run: Run, model: CycleGAN | Supervised, step: int, validation: Validation,
           initialised_from: str | None) -> int:
    """Export the generator of ``model_select`` to ``RUN_DIR/model`` (rank 0 only); return its step.

    The card's extra fields: ``validation`` (of the exported step), ``selection`` (when chosen by validation),
    ``initialised_from`` (``init_generator``), ``training_domain`` (kernels, pixel sizes and thicknesses of
    the training split: denoise warns outside them) and, for supervised runs, ``task``.
    """
    from ldct_monai.domain import training_domain
    from ldct_monai.modelio import export_model

    config, best, last_val = run.config, validation.best, validation.last
    supervised = config.method == "supervised"
    generator, export_step, extra = model.generator, step, ({"validation": last_val} if last_val else None)
    if config.model_select != "last" and not best:
        log.warning("model_select %s: no validation ran (empty val split or no val pairs?); exporting the last "
                    "generator.", config.model_select)
    if best:
        generator = ResNetGenerator(**config.generator_kwargs)
        generator.load_state_dict(best["state"])
        export_step = int(best["step"])
        selection = {"by": config.model_select, "step": export_step, "last_step": step, "last_validation": last_val}
        if config.model_select == "val-pairs":
            selection["gain_db"] = -best["score"]
            log.info("Exporting the generator of step %d (val paired gain %+.2f dB; last step %d: %+.2f dB).",
                     export_step, -best["score"], step, float(last_val.get("gain_db", math.nan)))
        else:
            selection["score_hu"] = best["score"]
            log.info("Exporting the generator of step %d (val G(LD) noise %.1f HU, FD %.1f HU; last step %d).",
                     export_step, best["val"]["noise_g_ld"], best["val"]["noise_fd"], step)
        extra = {"validation": best["val"], "selection": selection}
    if initialised_from is not None:
        extra = {**(extra or {}), "initialised_from": initialised_from}
    domain = training_domain(Path(config.manifest))
    if domain:  # kernels, pixel sizes, thicknesses trained on: denoise warns outside them
        extra = {**(extra or {}), "training_domain": domain}
    if supervised:
        extra = {**(extra or {}), "task": "low-dose CT -> full-dose CT (residual ResNet generator, supervised "
                                          f"on paired patches, {config.supervised_loss} loss)"}
    export_model(run.run_dir / "model", generator, config.generator_kwargs, hu_window=config.hu_window,
                 config=asdict(config), manifest_hash=run.manifest_hash, step=export_step, extra=extra,
                 name="ldct-monai-supervised" if supervised else "ldct-monai-cyclegan")
    return export_step


def _write_run_info(run: Run, step: int, export_step: int, elapsed: float, checksums: list[str],
                    curves: Path | None) -> None:
    """``RUN_DIR/run.json``: what ran where (steps, world size, device, precision, replica checksums)."""
    run_info = {
        "steps": step, "exported_step": export_step, "stop": run.stop, "schedule_steps": run.total,
        "steps_per_epoch": run.steps_per_epoch, "world_size": run.world, "device": str(run.device),
        "precision": run.config.precision, "seconds_this_session": round(elapsed, 2), "replica_checksums": checksums,
        "replicas_identical": len(set(checksums)) == 1, "manifest_hash": run.manifest_hash,
        "loss_curves": str(curves) if curves else None, "versions": package_versions(),
    }
    atomic_write_text(run.run_dir / "run.json", json.dumps(run_info, indent=2) + "\n")
    if len(set(checksums)) != 1:
        log.warning("DDP replicas differ at the end of training: %s", checksums)


def train(config: TrainConfig) -> Path:
    """Train the CycleGAN (or the supervised generator) of ``config``, export the LD->FD generator; return RUN_DIR.

    Works alike on CPU, one GPU, and under ``torchrun`` with several processes (DDP; rank 0 writes).
    ``config.resume`` continues from the newest loadable checkpoint exactly (same next batch, same lr).
    The parts have their own homes: :func:`resume_run`, :func:`write_checkpoint`, :class:`Validation` (with
    the model selection) and :func:`export_generator`; this function builds the run and holds the loop.

    Raises:
        InputError: bad manifest, config, or resume request.
        OutputExistsError: RUN_DIR exists without --resume or --overwrite.
        TrainingDiverged: a loss became NaN or infinite (the last checkpoint stays usable).
    """
    from ldct_monai.data import PairedBatches, UnpairedBatches, pair_records, split_records
    from ldct_monai.manifest import manifest_hash
    from ldct_monai.monitor import Monitor
    from ldct_monai.progress import make_progress

    if not config.manifest or not config.out:
        raise InputError("training needs a manifest folder (--manifest) and a run folder (--out).")
    # Check the manifest (and a generator to start from) before anything is created on disk.
    supervised = config.method == "supervised"
    if supervised:
        pairs = pair_records(Path(config.manifest), "train_pairs")
    else:
        ld_records = split_records(Path(config.manifest), "train_ld", "ld", Dose.LOW.value)
        fd_records = split_records(Path(config.manifest), "train_fd", "fd", Dose.FULL.value)
    init_state = init_generator_state(config.init_generator, config) if config.init_generator else None
    rank, world, device = _dist_setup(config)
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        run_dir = Path(config.out)
        config = _prepare(config, rank, world)
        mhash = manifest_hash(Path(config.manifest))
        cache_dir = (Path(config.cache_dir) if config.cache_dir else run_dir / "cache") if config.cache == "disk" else None
        if supervised:
            batches = PairedBatches(config, pairs, rank=rank, world_size=world, cache_dir=cache_dir,
                                    pin_memory=device.type == "cuda")
        else:
            batches = UnpairedBatches(config, ld_records, fd_records, rank=rank, world_size=world, cache_dir=cache_dir,
                                      pin_memory=device.type == "cuda")
        spe = batches.steps_per_epoch
        if config.total_steps:
            total, decay = config.total_steps, config.total_steps // 2
        else:
            total, decay = config.epochs * spe, config.decay_epochs * spe
        stop = min(total, config.max_steps) if config.max_steps else total
        run = Run(config, run_dir, rank, world, device, spe, mhash, total, stop)
        if rank == 0 and config.precision == "bf16" and not native_bf16(str(device)):
            log.warning("--precision bf16 on %s without native bf16 (a CPU without AVX-512-BF16 or AMX, or such a GPU): autocast "
                        "emulates it and is slower than fp32 (`ldct-monai bench train --precision bf16` compares them).", device)
        model = (Supervised if supervised else CycleGAN)(config, device, total, decay, rank, world)
        if init_state is not None and not config.resume:
            model.start_from(init_state[0])
            if rank == 0:
                log.info("LD->FD generator starts from %s.", init_state[1])
        step, best = resume_run(run, model) if config.resume else (0, {})
        monitor = Monitor(run_dir, config.hu_window, config.tensorboard, resume_step=step if config.resume else None) \
            if rank == 0 else None
        validate = Validation(run, monitor, best)
        if step == 0:
            validate(model, 0)  # the "before" picture: a residual generator starts near the identity
        patches_per_step = (1 if supervised else 2) * config.batch_size * world
        t_log, s_log = time.perf_counter(), step
        t0 = time.perf_counter()
        with make_progress(disable=rank != 0) as progress:
            task = progress.add_task("train", total=stop, completed=step, unit="step", info="")
            while step < stop:
                epoch, in_epoch = divmod(step, spe)
                for batch in batches.epoch(epoch, in_epoch):
                    losses = model.train_step(*batch)
                    step += 1
                    values = dict(zip(model.loss_names, losses.tolist(), strict=True))  # one host sync per step
                    bad = [k for k, v in values.items() if not math.isfinite(v)]
                    if bad:
                        raise TrainingDiverged(
                            f"step {step}: non-finite loss ({', '.join(f'{k}={values[k]}' for k in bad)}); the last "
                            f"checkpoint in {run_dir / 'checkpoints'} is intact. Try --precision fp32, a lower --lr, "
                            "or grad_clip: 1.0 in a --config file.")
                    info = " ".join(f"{k} {values[k]:.4f}" for k in model.progress_keys)
                    progress.update(task, advance=1, info=f"{info} ep {epoch}")
                    if monitor is not None and (step % config.log_every == 0 or step == stop):
                        now = time.perf_counter()
                        rate = (step - s_log) * patches_per_step / max(now - t_log, 1e-9)
                        t_log, s_log = now, step
                        monitor.scalars(step, {"epoch": epoch, "lr": model.sched_g.get_last_lr()[0], **values,
                                               "patches_per_s": rate})
                    if step % config.val_every == 0 or step == stop:
                        validate(model, step)
                    epoch_end = step % spe == 0
                    if step % config.checkpoint_every == 0 or step == stop or epoch_end:
                        write_checkpoint(run, model, step, validate.best)
                    if step >= stop:
                        break
        elapsed = time.perf_counter() - t0
        checksums = _all_gather(model.param_checksum(), world)
        if rank == 0:
            export_step = export_generator(run, model, step, validate, init_state[1] if init_state is not None else None)
            curves = monitor.loss_curves() if monitor else None
            _write_run_info(run, step, export_step, elapsed, checksums, curves)
            if monitor:
                monitor.close()
        _barrier(world)
        return run_dir
    finally:
        torch.set_num_threads(threads_before)
        if world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
