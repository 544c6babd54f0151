"""HU slices in, denoised HU slices out, with the exported LD->FD generator.

The one inference path shared by ``denoise``, ``evaluate`` and the benchmarks: HU -> [-1, 1] (the
model card's window) -> generator -> HU. Full slices are reflect-padded to the network stride and
cropped back.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ldct_monai.modelio import LoadedModel, load_model
from ldct_monai.runtime import autocast, resolve_device


class Denoiser:
    """Callable that denoises HU slices with an exported generator.

    Args:
        model: a :class:`LoadedModel` (see :func:`ldct_monai.modelio.load_model`).
        device: "auto", "cpu" or "cuda[:N]".
        precision: "fp32" (default; DICOM output), "bf16" or "fp16" autocast.
        batch_size: slices per forward pass.
    """

    def __init__(self, model: LoadedModel, device: str = "auto", precision: str = "fp32", batch_size: int = 4) -> None:
        self.model = model
        self.device = resolve_device(device)
        self.precision = precision
        self.batch_size = max(1, int(batch_size))
        self.window = model.hu_window
        self.net = model.generator.to(self.device).eval()
        self.stride = getattr(self.net, "stride", 4)

    @classmethod
    def from_path(cls, path: Path, **kwargs) -> Denoiser:
        return cls(load_model(path), **kwargs)

    @torch.inference_mode()
    def forward_unit(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [-1, 1] on any device -> (B, 1, H, W) float32 in [-1, 1] (padding handled)."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        x = x.to(self.device, torch.float32)
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect")
        with autocast(self.device, self.precision):
            y = self.net(x)
        return y[..., :h, :w].float()

    def __call__(self, hu: np.ndarray) -> np.ndarray:
        """(H, W) or (B, H, W) HU -> denoised HU float32 of the same shape (inside the card's window)."""
        hu = np.asarray(hu, dtype=np.float32)
        single = hu.ndim == 2
        batch = hu[None] if single else hu
        out = np.empty_like(batch)
        for i in range(0, len(batch), self.batch_size):
            x = torch.from_numpy(self.window.to_unit(batch[i : i + self.batch_size]))[:, None]
            out[i : i + self.batch_size] = self.window.to_hu(self.forward_unit(x)[:, 0].cpu().numpy())
        return out[0] if single else out
