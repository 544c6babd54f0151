"""`ldct-monai bench train`: training-step throughput, reference vs fast path (engine: :mod:`ldct_monai.bench.train`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ldct_monai.progress import console


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


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

    from ldct_monai.bench.train import run_bench
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
