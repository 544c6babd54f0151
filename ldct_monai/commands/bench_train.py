"""`ldct-monai bench train`: training-step throughput, reference vs fast path, in one process.

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

import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional

import typer

from ldct_monai.progress import console


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def conv_peak(device, precision: str, repeats: int = 5) -> float:
    """GFLOP/s of a large 3x3 convolution (forward), the practical peak of this device and precision."""
    import torch

    from ldct_monai.runtime import autocast

    n, c, hw = (8, 256, 64) if device.type == "cpu" else (64, 256, 128)
    x = torch.randn(n, c, hw, hw, device=device)
    conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(device)
    flops = 2.0 * n * c * c * 9 * hw * hw
    times = []
    with torch.no_grad(), autocast(device, precision):
        for i in range(repeats + 1):
            _sync(device)
            t = time.perf_counter()
            conv(x)
            _sync(device)
            if i:
                times.append(time.perf_counter() - t)
    return flops / statistics.median(times) / 1e9


def step_flops(config, device) -> float:
    """FLOPs of one full CycleGAN training step (forward + backward of all four networks), counted once."""
    from torch.utils.flop_counter import FlopCounterMode

    from ldct_monai.engine import CycleGAN

    model = CycleGAN(config.replace(precision="fp32", compile=False, channels_last=False), device, 1000, 500)
    batch = _batch(config, device)
    counter = FlopCounterMode(display=False)
    with counter:
        model.train_step(*batch)
    del model
    return float(counter.get_total_flops())


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
            _sync(device)
            t = time.perf_counter()
            model.train_step(*batch).tolist()
            _sync(device)
            if i >= warmup:
                times[j].append(time.perf_counter() - t)
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


def bench_train(
    preset: str = typer.Option("cpu-small", "--preset", help="Model/patch/batch preset to measure."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Patches per domain per step (default: the preset's)."),
    steps: int = typer.Option(5, "--steps", help="Timed steps per path (median reported)."),
    warmup: int = typer.Option(2, "--warmup", help="Untimed warm-up steps per path."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    precision: str = typer.Option("bf16", "--precision", help="Precision of the fast path: bf16 or fp16."),
    channels_last: Optional[bool] = typer.Option(None, "--channels-last/--no-channels-last",
                                                 help="channels_last in the fast path (default: on GPU only)."),
    compile_: Optional[bool] = typer.Option(None, "--compile/--no-compile",
                                            help="torch.compile in the fast path (default: on GPU only)."),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0: torch's default, one per core)."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
) -> None:
    """Benchmark train throughput against a reference measured in the same process."""
    from rich.table import Table

    from ldct_monai.errors import InputError
    from ldct_monai.io_utils import atomic_write_text

    if steps < 1 or warmup < 0:
        raise InputError(f"--steps must be >= 1 and --warmup >= 0, found {steps} and {warmup}.")
    with console.status(f"benchmarking {preset} ..."):
        res = run_bench(preset, batch_size, steps, warmup, device, precision, channels_last, compile_, threads)
    table = Table(title=f"bench train: {preset}, batch {res['batch_size']} x {res['patch_size']}px per domain, "
                        f"{res['device']}, {res['threads']} threads; {res['step_gflop']:.1f} GFLOP/step")
    for col in ("path", "step s", "patches/s", "GFLOP/s", "conv peak GFLOP/s", "% of peak"):
        table.add_column(col, justify="left" if col == "path" else "right")
    for r in res["rows"]:
        table.add_row(r["path"], f"{r['step_s']:.3f}", f"{r['patches_per_s']:.1f}", f"{r['gflops']:.1f}",
                      f"{r['peak_gflops']:.1f}", f"{100 * r['fraction_of_peak']:.0f} %")
    console.print(table)
    console.print(f"fast / reference: [bold]{res['speedup']:.2f}x[/] (same batch, same process)", highlight=False)
    if json_out:
        atomic_write_text(json_out, json.dumps(res, indent=2) + "\n")
