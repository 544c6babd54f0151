"""The ResNet generator of CycleGAN (Zhu et al. 2017; Johnson et al. 2016), for 1-channel CT.

MONAI has no such generator, so it is ours. Discriminators are MONAI's ``PatchDiscriminator``
(see :func:`make_discriminator`).

Layout: reflection pad + 7x7 stem, two stride-2 3x3 downsamplings, ``n_blocks`` residual blocks,
two x2 upsamplings, reflection pad + 7x7 head, tanh. Instance norm without affine parameters, as in the
reference implementation. Two options matter for CT denoising:

* ``upsample="resize"``: nearest x2 then a 3x3 convolution (Odena et al. 2016, "Deconvolution and
  checkerboard artifacts"), instead of transposed convolutions, which leave checkerboard patterns
  that are easy to see in flat soft tissue.
* ``residual=True``: output = clamp(input + correction, -1, 1). Denoising is a small correction of
  the input, and a network that starts at the identity keeps HU in place from step 0.
"""

from __future__ import annotations

import math

import torch
from torch import nn

UPSAMPLE_MODES = ("resize", "transpose")


NORMS = ("instance", "none")


def _norm(kind: str, channels: int) -> nn.Module:
    """Instance norm (Zhu et al.) or none: a supervised denoiser trained on small patches and run on whole
    slices should not normalise by per-image statistics, which differ between a 64 px patch and a slice."""
    return nn.InstanceNorm2d(channels) if kind == "instance" else nn.Identity()


class ResnetBlock(nn.Module):
    """x + [pad, conv3x3, norm, ReLU, pad, conv3x3, norm](x)."""

    def __init__(self, channels: int, norm: str = "instance") -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=True),
            _norm(norm, channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, 3, bias=True),
            _norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResNetGenerator(nn.Module):
    """CycleGAN ResNet generator mapping (B, C, H, W) in [-1, 1] to the same shape in [-1, 1].

    Args:
        in_channels: input channels (1 for CT).
        out_channels: output channels (1 for CT).
        ngf: filters of the first layer; 64 in the MathWorks example and Zhu et al.
        n_blocks: residual blocks at 1/4 resolution; 6 for 128 px patches, 9 for 256 px.
        upsample: "resize" (nearest + conv, no checkerboard) or "transpose" (Zhu et al.).
        residual: predict a correction added to the input (needs in_channels == out_channels).
        norm: "instance" (Zhu et al.) or "none" (see :func:`_norm`).

    H and W must be multiples of :attr:`stride` (4); pad full slices before calling
    (``ldct_monai.inference`` does).
    """

    stride = 4  # two stride-2 downsamplings
    __constants__ = ["stride"]  # TorchScript (monai.bundle ckpt_export) sees class attributes only when listed here

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        ngf: int = 64,
        n_blocks: int = 6,
        upsample: str = "resize",
        residual: bool = True,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, found {norm!r}.")
        if upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, found {upsample!r}.")
        if residual and in_channels != out_channels:
            raise ValueError(f"residual=True needs in_channels == out_channels, found {in_channels} and {out_channels}.")
        if n_blocks < 0 or ngf < 1:
            raise ValueError(f"need ngf >= 1 and n_blocks >= 0, found ngf={ngf}, n_blocks={n_blocks}.")
        self.residual = residual
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, 7),
            _norm(norm, ngf),
            nn.ReLU(inplace=True),
        ]
        ch = ngf
        for _ in range(2):  # downsample
            layers += [nn.Conv2d(ch, ch * 2, 3, stride=2, padding=1), _norm(norm, ch * 2), nn.ReLU(inplace=True)]
            ch *= 2
        layers += [ResnetBlock(ch, norm) for _ in range(n_blocks)]
        for _ in range(2):  # upsample
            if upsample == "transpose":
                up: list[nn.Module] = [nn.ConvTranspose2d(ch, ch // 2, 3, stride=2, padding=1, output_padding=1)]
            else:
                up = [nn.Upsample(scale_factor=2, mode="nearest"), nn.ReflectionPad2d(1), nn.Conv2d(ch, ch // 2, 3)]
            layers += [*up, _norm(norm, ch // 2), nn.ReLU(inplace=True)]
            ch //= 2
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ch, out_channels, 7), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % self.stride or w % self.stride:
            raise ValueError(f"input height and width must be multiples of {self.stride}, found {h}x{w}.")
        y = self.head(self.body(x))
        if self.residual:
            return torch.clamp(x + y, -1.0, 1.0)
        return y

    def zero_head_(self) -> ResNetGenerator:
        """Zero the head convolution: a residual generator then is exactly the identity (tests, warm start)."""
        conv = self.head[1]
        nn.init.zeros_(conv.weight)
        nn.init.zeros_(conv.bias)
        return self


def make_discriminator(in_channels: int = 1, ndf: int = 64, n_layers: int = 3, norm: str | None = "INSTANCE") -> nn.Module:
    """70x70 PatchGAN discriminator (for n_layers=3): MONAI ``PatchDiscriminator`` with instance norm.

    Its forward returns a list of intermediate features; the last item is the patch logits map.
    """
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(
        spatial_dims=2,
        num_layers_d=n_layers,
        channels=ndf,
        in_channels=in_channels,
        out_channels=1,
        kernel_size=4,
        norm=norm,
        bias=True,
        padding=1,
    )


MIN_SOFT_SHARE = 0.05  # NoiseGenerator: an image needs this share of soft tissue to set its own noise level


class NoiseGenerator(nn.Module):
    """The CycleGAN's FD -> LD generator as a dose reduction: ``F(y) = y + a(y) * (k_b * z)``, z white Gaussian.

    With filtered back-projection, lowering the dose adds noise whose NPS has the shape of the full-dose
    image's own noise (``docs/simulator.md``). So F adds fresh noise instead of transforming ``y``: ``z`` is
    drawn anew at every call and coloured by the learnt kernel ``k_b`` of the image's body part ``b``
    (body parts are scanned with different reconstruction kernels; each ``k_b`` is normalised to unit L2
    norm, so ``k_b * z`` has unit variance and ``a`` alone sets the level). ``a(y)`` is a learnt level per
    body part times ``exp(local(y))``, a small convolution of ``y`` whose last layer starts at zero: noise
    may grow in dense regions and vanish in air, as photon counts say. Index ``n_parts`` is "unknown".
    After :meth:`follow_image_noise_` (``noise_level: image``) the level also follows each image's own noise,
    ``fine_scale(y)`` over its body part's reference: the FBP law ``sigma_add = sigma_FD sqrt(1/f - 1)`` per
    image, for series whose noise differs (chest slabs of one patient: 48-120 HU at full dose).

    Why not the ResNet F of Zhu et al.? A deterministic F can only re-use the noise already in ``y``; the
    backward cycle ``G(F(y)) ~ y`` then teaches G to keep it. With fresh noise that cycle is supervised
    learning on realistic pairs, and F has ~ 1 100 parameters an adversarial loss can set in a few hundred steps.

    Args:
        n_parts: known body parts (``len(BODY_PARTS)``).
        kernel_size: side of each ``k_b`` in pixels (odd).
        amplitude: starting level (network units) for every body part.
    """

    def __init__(self, n_parts: int = 3, kernel_size: int = 15, amplitude: float = 0.01) -> None:
        super().__init__()
        # per-image level (noise_level: image): a(y) also scales with fine_scale(y) / reference_scale[b];
        # a reference of 0 (the default) keeps one level per body part
        self.register_buffer("reference_scale", torch.zeros(int(n_parts) + 1))
        self.register_buffer("soft_range", torch.tensor([-1.0, 1.0]))
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd and >= 1, found {kernel_size}.")
        if amplitude <= 0:
            raise ValueError(f"amplitude must be > 0, found {amplitude}.")
        self.n_parts = int(n_parts)
        delta = torch.zeros(self.n_parts + 1, 1, kernel_size, kernel_size)
        delta[:, 0, kernel_size // 2, kernel_size // 2] = 1.0  # white noise until calibrated
        self.kernel = nn.Parameter(delta)
        self.log_amplitude = nn.Parameter(torch.full((self.n_parts + 1,), math.log(amplitude)))
        self.local = nn.Sequential(nn.Conv2d(1, 8, 5, padding=2, padding_mode="reflect"), nn.Tanh(), nn.Conv2d(8, 1, 1))
        nn.init.zeros_(self.local[2].weight)
        nn.init.zeros_(self.local[2].bias)

    @torch.no_grad()
    def calibrate_(self, amplitudes: dict[int, float], kernels: dict[int, torch.Tensor] | None = None) -> NoiseGenerator:
        """Set the starting levels (network units) and kernels (any scale) per body-part index."""
        for index, amp in amplitudes.items():
            self.log_amplitude[int(index)] = math.log(max(float(amp), 1e-6))
        for index, kernel in (kernels or {}).items():
            k = torch.as_tensor(kernel, dtype=self.kernel.dtype)
            if k.shape != self.kernel.shape[-2:]:
                raise ValueError(f"kernel must be {tuple(self.kernel.shape[-2:])}, found {tuple(k.shape)}.")
            self.kernel[int(index), 0] = k / k.norm()
        return self

    @torch.no_grad()
    def follow_image_noise_(self, reference: dict[int, float], soft_range: tuple[float, float]) -> NoiseGenerator:
        """Scale each image's level by its own fine-detail noise: ``fine_scale(y) / reference[b]``.

        ``reference`` maps body-part indices to the median :meth:`fine_scale` of their full-dose slices;
        ``soft_range`` is the soft-tissue range (network units) where it is measured.
        """
        for index, value in reference.items():
            self.reference_scale[int(index)] = float(value)
        self.soft_range.copy_(torch.tensor([float(soft_range[0]), float(soft_range[1])]))
        return self

    @torch.no_grad()
    def fine_scale(self, fd: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Median absolute fine detail ``|y - blur_1px(y)|`` in each image's smooth soft tissue, and its pixel share.

        A noise level up to a factor the NPS shape sets (fixed per body part, so the ratio to the part's
        reference is the ratio of noise levels). Returns ``(scale, share)``, each (B,).
        """
        x = fd.float()
        g = torch.exp(-torch.arange(-2, 3, dtype=torch.float32, device=x.device) ** 2 / 2.0)
        g = (g / g.sum()).view(1, 1, 1, 5)
        blur = nn.functional.conv2d(nn.functional.conv2d(nn.functional.pad(x, (2, 2, 2, 2), mode="reflect"), g), g.transpose(-1, -2))
        smooth = nn.functional.avg_pool2d(nn.functional.pad(x, (3, 3, 3, 3), mode="reflect"), 7, stride=1)
        mask = ((smooth > self.soft_range[0]) & (smooth < self.soft_range[1])).float()
        count = mask.flatten(1).sum(1)
        detail = torch.where(mask > 0, (x - blur).abs(), torch.full_like(x, float("nan")))
        scale = torch.nan_to_num(detail.flatten(1).nanmedian(dim=1).values, nan=0.0)  # edges stay out
        return scale, count / mask[0].numel()

    def _image_factor(self, fd: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Per image ``fine_scale / reference`` (clamped to [1/4, 4]); 1 without a reference or soft tissue."""
        ref = self.reference_scale[index]
        scale, share = self.fine_scale(fd)
        ok = (ref > 0) & (share >= MIN_SOFT_SHARE)
        return torch.where(ok, (scale / ref.clamp_min(1e-12)).clamp(0.25, 4.0), torch.ones_like(scale))

    def _index(self, like: torch.Tensor, body_part: torch.Tensor | None) -> torch.Tensor:
        if body_part is None:
            return torch.full((like.shape[0],), self.n_parts, dtype=torch.long, device=like.device)
        bp = body_part.to(like.device).view(-1).long()
        return torch.where(bp >= 0, bp, torch.full_like(bp, self.n_parts))

    def noise(self, like: torch.Tensor, body_part: torch.Tensor | None = None) -> torch.Tensor:
        """Unit-variance noise shaped like ``like`` (B, 1, H, W), each image coloured by its body part's kernel
        (draws from the global torch RNG)."""
        k = (self.kernel / self.kernel.flatten(1).norm(dim=1).clamp_min(1e-12)[:, None, None, None]).to(like.dtype)
        p, b = k.shape[-1] // 2, like.shape[0]
        z = torch.randn(b, 1, like.shape[-2] + 2 * p, like.shape[-1] + 2 * p, device=like.device, dtype=like.dtype)
        # Every kernel on every image, then each image's own: a plain convolution is far faster on CPU than
        # a grouped one with a kernel per image (measured 0.6 s per 16 patches forward + backward).
        all_parts = nn.functional.conv2d(z, k)  # (B, n_parts + 1, H, W)
        index = self._index(like, body_part).view(-1, 1, 1, 1).expand(-1, 1, *all_parts.shape[-2:])
        return torch.gather(all_parts, 1, index)

    def amplitude(self, fd: torch.Tensor, body_part: torch.Tensor | None = None) -> torch.Tensor:
        """The noise level map a(y) (B, 1, H, W), network units."""
        index = self._index(fd, body_part)
        level = self.log_amplitude[index].exp()
        if bool((self.reference_scale > 0).any()):
            level = level * self._image_factor(fd, index)
        return level.view(-1, 1, 1, 1).to(fd.dtype) * torch.exp(self.local(fd).clamp(-2.0, 2.0))

    def forward(self, fd: torch.Tensor, body_part: torch.Tensor | None = None) -> torch.Tensor:
        return torch.clamp(fd + self.amplitude(fd, body_part) * self.noise(fd, body_part), -1.0, 1.0)
