"""HU slices in, denoised HU slices out, with the exported LD->FD generator.

The one inference path shared by ``denoise``, ``evaluate`` and the benchmarks: HU -> [-1, 1] (the
model card's window) -> generator -> HU.

* Full slices (default): reflect-padded to the network stride (4) and cropped back, so the generator
  sees the whole slice at once, exactly as a viewer shows it.
* Tiled (``tile=128``): MONAI ``SlidingWindowInferer`` with ``overlap`` and Gaussian blending. The
  generator's instance norm then sees patch statistics, like in training (MathWorks example: 128 px
  patches), and GPU memory is bounded by the tile size whatever the slice size.

:func:`denoise_stream` runs a whole series through a :class:`Denoiser` with reading/decoding and
packing/writing in background threads, overlapped with the model, and bounded queues, so throughput is
set by the model and memory does not grow with the number of slices.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.nn.functional as F

from ldct_monai.dicom.reader import ordered_prefetch
from ldct_monai.errors import InputError
from ldct_monai.modelio import LoadedModel
from ldct_monai.runtime import autocast, resolve_device
from ldct_monai.schema import PRECISIONS

P = TypeVar("P")
MIN_TILE = 32  # smaller tiles leave the 1/4-resolution residual blocks too little context


class Denoiser:
    """Callable that denoises HU slices with an exported generator.

    Args:
        model: a :class:`LoadedModel` (see :func:`ldct_monai.modelio.load_model`).
        device: "auto", "cpu" or "cuda[:N]".
        precision: "fp32" (default; DICOM output), "bf16" or "fp16" autocast.
        batch_size: slices per forward pass (tiles per forward pass when tiled).
        tile: None for full slices; else the square tile size in pixels for MONAI
            ``SlidingWindowInferer`` (a multiple of the generator stride, at least 32).
        overlap: fraction of a tile shared with its neighbours (tiled mode), in [0, 1).
        channels_last: run the generator in NHWC memory format (default). oneDNN's NHWC convolutions
            are ~1.5x faster than NCHW on AVX-512 CPUs for this generator (``ldct-monai bench denoise``);
            the result is the same fp32 arithmetic in another order (differences ~1e-6 of the HU window).

    Raises:
        InputError: unknown precision, bad tile size or overlap, unavailable device.
    """

    def __init__(
        self,
        model: LoadedModel,
        device: str = "auto",
        precision: str = "fp32",
        batch_size: int = 4,
        tile: int | None = None,
        overlap: float = 0.25,
        channels_last: bool = True,
    ) -> None:
        if precision not in PRECISIONS:
            raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, found {precision!r}.")
        if int(batch_size) < 1:
            raise InputError(f"--batch-size must be at least 1, found {batch_size}.")
        self.model = model
        self.device = resolve_device(device)
        self.precision = precision
        self.batch_size = int(batch_size)
        self.window = model.hu_window
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.net = model.generator.to(self.device, memory_format=self.memory_format).eval()
        self.stride = int(getattr(self.net, "stride", 4))
        self.tile = None if tile in (None, 0) else int(tile)
        self.overlap = float(overlap)
        if self.tile is not None and (self.tile < MIN_TILE or self.tile % self.stride):
            raise InputError(f"--tile must be a multiple of {self.stride} and at least {MIN_TILE} pixels, found {tile}.")
        if not 0.0 <= self.overlap < 1.0:
            raise InputError(f"tile overlap must be in [0, 1), found {overlap}.")
        self._inferer = None
        if self.tile is not None:
            from monai.inferers import SlidingWindowInferer

            self._inferer = SlidingWindowInferer(
                roi_size=(self.tile, self.tile),
                sw_batch_size=self.batch_size,
                overlap=self.overlap,
                mode="gaussian",  # blend tiles with Gaussian weights: no seams at tile borders
                padding_mode="replicate",  # a slice smaller than a tile is padded with its edge values
            )

    @property
    def mode(self) -> str:
        """'full slice' or a description of the tiling, for provenance."""
        if self.tile is None:
            return "full slice"
        return f"{self.tile} px tiles, overlap {self.overlap:g}, Gaussian blending"

    def _padded_net(self, x: torch.Tensor) -> torch.Tensor:
        """Generator on (B, 1, H, W) of any size: reflect-pad to the stride, crop back, float32."""
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.stride, (-w) % self.stride
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if (ph < h and pw < w) else "replicate")
        x = x.contiguous(memory_format=self.memory_format)
        with autocast(self.device, self.precision):
            y = self.net(x)
        return y[..., :h, :w].float()

    @torch.inference_mode()
    def forward_unit(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [-1, 1] on any device -> (B, 1, H, W) float32 in [-1, 1] on the device."""
        x = x.to(self.device, torch.float32, non_blocking=True)
        h, w = x.shape[-2:]
        if self._inferer is None or (h <= self.tile and w <= self.tile):
            return self._padded_net(x)
        return self._inferer(x, self._padded_net).float()

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


@dataclass
class StreamStats:
    """What :func:`denoise_stream` did, in seconds of wall time.

    Attributes:
        items: slices denoised.
        batches: forward passes.
        wall_s: the whole stream, first read to last write.
        model_s: HU -> network -> HU on the compute thread (includes host<->device copies).
        wait_read_s: compute thread waiting for decoded slices (reading is the bottleneck when large).
        wait_write_s: compute thread waiting for writes to drain (writing is the bottleneck when large).
    """

    items: int = 0
    batches: int = 0
    wall_s: float = 0.0
    model_s: float = 0.0
    wait_read_s: float = 0.0
    wait_write_s: float = 0.0

    @property
    def items_per_s(self) -> float:
        return self.items / self.wall_s if self.wall_s > 0 else 0.0


def denoise_stream(
    denoiser: Denoiser,
    items: Iterable[Any],
    load: Callable[[Any], tuple[P, np.ndarray]],
    save: Callable[[P, np.ndarray], Any],
    *,
    read_ahead: int | None = None,
    read_workers: int = 2,
    write_workers: int = 2,
    on_saved: Callable[[P], None] | None = None,
) -> StreamStats:
    """Denoise a stream of slices with reading and writing overlapped with the model.

    ``load(item) -> (payload, hu)`` runs in ``read_workers`` threads, up to ``read_ahead`` items ahead;
    the model runs on the calling thread in batches of ``denoiser.batch_size``; ``save(payload, hu_out)``
    runs in ``write_workers`` threads with at most ``2 * batch_size`` writes pending. Items are loaded,
    denoised and saved in order of ``items``; memory is bounded by the queue sizes, never by the number
    of items. The first exception (from load, model or save) stops the stream and is raised.

    Args:
        denoiser: the model.
        items: what to load, e.g. slice indices.
        load: item -> (payload passed on to ``save``, (H, W) HU slice).
        save: (payload, denoised (H, W) HU float32) -> anything.
        read_ahead: slices decoded ahead; 2 batches when None.
        read_workers: threads reading and decoding.
        write_workers: threads packing and writing.
        on_saved: called with the payload after each save, on the calling thread (progress bars).

    Returns:
        :class:`StreamStats` with the timings.
    """
    bs = denoiser.batch_size
    read_ahead = read_ahead or 2 * bs
    stats = StreamStats()
    t0 = time.perf_counter()
    loaded = ordered_prefetch(load, items, read_ahead, read_workers)
    pending: collections.deque[tuple[cf.Future, Any]] = collections.deque()

    def drain(limit: int) -> None:
        while len(pending) > limit:
            fut, payload = pending.popleft()
            tw = time.perf_counter()
            fut.result()
            stats.wait_write_s += time.perf_counter() - tw
            if on_saved is not None:
                on_saved(payload)

    with cf.ThreadPoolExecutor(max_workers=max(1, write_workers), thread_name_prefix="dicom-write") as pool:
        try:
            done = False
            while not done:
                payloads, slices = [], []
                tr = time.perf_counter()
                for payload, hu in loaded:
                    payloads.append(payload)
                    slices.append(hu)
                    if len(slices) == bs:
                        break
                else:
                    done = True
                stats.wait_read_s += time.perf_counter() - tr
                if not slices:
                    break
                tm = time.perf_counter()
                out = denoiser(np.stack(slices))
                stats.model_s += time.perf_counter() - tm
                stats.batches += 1
                for payload, hu_out in zip(payloads, out):
                    pending.append((pool.submit(save, payload, hu_out), payload))
                    stats.items += 1
                drain(2 * bs)
            drain(0)
        except BaseException:
            for fut, _ in pending:
                fut.cancel()
            loaded.close()
            raise
    stats.wall_s = time.perf_counter() - t0
    return stats
