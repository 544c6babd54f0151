"""Timing, FLOP counting and the convolution peak shared by the benchmarks.

* :func:`sync` / :func:`timed`: wall seconds of one call, with the GPU drained before and after;
* :func:`count_flops`: FLOPs of any call, counted by ``torch.utils.flop_counter`` (convolutions and matrix
  products, forward and backward; norms, activations and padding are not counted);
* :func:`conv_peak`: FLOP/s of one large 3x3 convolution, the practical peak of a device and precision.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def sync(device: Any) -> None:
    """Wait for the device's queued work (CUDA); a no-op on CPU."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: Any) -> float:
    """Wall seconds of ``fn()``, the device synchronised before and after."""
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def count_flops(fn: Callable[[], Any]) -> float:
    """FLOPs (2 x multiply-adds) of ``fn()``: convolutions (transposed too) and matrix products."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return float(counter.get_total_flops())


def forward_flops(net: Any, shape: tuple[int, ...]) -> float:
    """FLOPs of one inference forward pass of ``net`` on a zero input of ``shape``."""
    import torch

    x = torch.zeros(shape, device=next(net.parameters()).device)
    with torch.inference_mode():
        return count_flops(lambda: net(x))


def conv_peak(device: Any, precision: str, *, channels: int, spatial: int, batch: int, repeats: int,
              reduce: Callable[[list[float]], float] = min) -> float:
    """FLOP/s of a ``channels`` -> ``channels`` 3x3 convolution on ``batch`` x ``spatial``^2 (forward, autocast).

    One untimed warm-up call, then ``repeats`` timed ones reduced by ``reduce`` (``min``: the best run;
    ``statistics.median``: robust to bursts of load).
    """
    import torch

    from ldct_monai.runtime import autocast

    conv = torch.nn.Conv2d(channels, channels, 3, padding=1, bias=False).to(device).eval()
    x = torch.randn(batch, channels, spatial, spatial, device=device)
    flops = 2.0 * batch * channels * channels * 9 * spatial * spatial
    with torch.inference_mode(), autocast(device, precision):
        conv(x)
        times = [timed(lambda: conv(x), device) for _ in range(repeats)]
    return flops / reduce(times)
