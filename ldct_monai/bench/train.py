"""Training-step throughput (``ldct-monai bench train``), reference vs fast path, in one process.

On one synthetic batch (no data loading: the loader is measured separately, see docs/training.md):

* the reference: the chosen preset in fp32, eager, contiguous (NCHW);
* the fast path: bf16 autocast (+ channels_last and torch.compile where asked / on a GPU);
* their ratio (fast / reference patches per second, equal batch);
* achieved GFLOP/s of a whole CycleGAN step (FLOPs counted with ``torch.utils.flop_counter``) next to
  the peak GFLOP/s of a large 3x3 convolution measured in the same process, fp32 and bf16.

Machines are noisy: every figure is a median of repeats, and only ratios measured in the same process
are meant to be compared.
"""

from __future__ import annotations

import statistics
from typing import Any

from ldct_monai.bench import timing


def conv_peak(device, precision: str, repeats: int = 5) -> float:
    """GFLOP/s of a large 3x3 convolution (forward), the practical peak of this device and precision (median)."""
    n, c, hw = (8, 256, 64) if device.type == "cpu" else (64, 256, 128)
    return timing.conv_peak(device, precision, channels=c, spatial=hw, batch=n, repeats=repeats,
                            reduce=statistics.median) / 1e9


def step_flops(config, device) -> float:
    """FLOPs of one full CycleGAN training step (forward + backward of all four networks), counted once."""
    from ldct_monai.engine import CycleGAN

    model = CycleGAN(config.replace(precision="fp32", compile=False, channels_last=False), device, 1000, 500)
    batch = _batch(config, device)
    return timing.count_flops(lambda: model.train_step(*batch))


def _batch(config, device):
    import torch

    g = torch.Generator().manual_seed(0)
    shape = (config.batch_size, 1, config.patch_size, config.patch_size)
    ld = (torch.rand(shape, generator=g) * 0.4 - 0.6).to(device)
    fd = (torch.rand(shape, generator=g) * 0.2 - 0.5).to(device)
    parts = torch.arange(config.batch_size) % 3  # body-part labels (used by body-part-conditioned discriminators)
    return ld, fd, parts, parts.flip(0)


def time_steps(configs: list, device, steps: int = 5, warmup: int = 2) -> list[float]:
    """Median seconds per training step of each config on a fixed synthetic batch, steps interleaved.

    The configs take turns step by step (A, B, A, B, ...), so a burst of load from other processes on a
    shared machine hits every path alike instead of spoiling one of them.
    """
    from ldct_monai.engine import CycleGAN

    models = [CycleGAN(cfg, device, 10_000, 5_000) for cfg in configs]
    batches = [_batch(cfg, device) for cfg in configs]
    times: list[list[float]] = [[] for _ in configs]
    for i in range(warmup + steps):
        for j, (model, batch) in enumerate(zip(models, batches, strict=True)):
            t = timing.timed(lambda: model.train_step(*batch).tolist(), device)  # noqa: B023 - called at once
            if i >= warmup:
                times[j].append(t)
    return [statistics.median(t) for t in times]


def run_bench(preset: str = "cpu-small", batch_size: int | None = None, steps: int = 5, warmup: int = 2,
              device: str = "auto", fast_precision: str = "bf16", fast_channels_last: bool | None = None,
              fast_compile: bool | None = None, threads: int = 0) -> dict[str, Any]:
    """Measure the reference and the fast path; return the table as a dict (see module docstring)."""
    import torch

    from ldct_monai.runtime import package_versions, resolve_device
    from ldct_monai.train_config import TrainConfig

    dev = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    over: dict[str, Any] = {"manifest": "-", "out": "-", "device": str(dev)}
    if batch_size:
        over["batch_size"] = batch_size
        over["patches_per_slice"] = 1
    base = TrainConfig.from_preset(preset, **over)
    ref = base.replace(precision="fp32", compile=False, channels_last=False)
    on_gpu = dev.type == "cuda"
    fast = base.replace(precision=fast_precision,
                        channels_last=on_gpu if fast_channels_last is None else fast_channels_last,
                        compile=on_gpu if fast_compile is None else fast_compile)
    flops = step_flops(base, dev)
    rows = []
    names = ["reference fp32 eager", f"fast {fast.precision}" + (" +channels_last" if fast.channels_last else "")
             + (" +compile" if fast.compile else "")]
    for name, cfg, t in zip(names, (ref, fast), time_steps([ref, fast], dev, steps, warmup), strict=True):
        rows.append({"path": name, "precision": cfg.precision, "channels_last": cfg.channels_last,
                     "compile": cfg.compile, "step_s": t, "patches_per_s": 2 * cfg.batch_size / t,
                     "gflops": flops / t / 1e9})
    peaks = {p: conv_peak(dev, p) for p in ("fp32", "bf16")}
    for r in rows:
        r["peak_gflops"] = peaks[r["precision"] if r["precision"] in peaks else "fp32"]
        r["fraction_of_peak"] = r["gflops"] / r["peak_gflops"]
    return {
        "preset": preset, "batch_size": base.batch_size, "patch_size": base.patch_size, "device": str(dev),
        "threads": torch.get_num_threads(), "step_gflop": flops / 1e9, "rows": rows,
        "speedup": rows[0]["step_s"] / rows[1]["step_s"], "conv_peak_gflops": peaks, "versions": package_versions(),
    }
