"""`ldct-monai bench denoise`: end to end vs model only vs FLOP floor; peak memory vs series length
(engine: :mod:`ldct_monai.bench.denoise`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def bench_denoise(
    slices: int = typer.Option(16, "--slices", min=1, help="Slices in the synthetic series for the throughput runs."),
    size: int = typer.Option(512, "--size", min=32, help="Rows = columns of the synthetic slices."),
    ngf: int = typer.Option(64, "--ngf", min=1, help="Generator width (64 = MathWorks / Zhu et al.)."),
    n_blocks: int = typer.Option(6, "--n-blocks", min=0, help="Generator residual blocks (6 for 128 px patches)."),
    model: Path | None = typer.Option(None, "--model", help="Benchmark this trained model instead of a randomly initialised generator."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Slices per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 or bf16."),
    tile: int | None = typer.Option(None, "--tile", help="Tiled inference with this tile size (pixels)."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="DICOM I/O worker processes (0: threads; default 0 on CPU, min(8, cores/2) on GPU)."),
    memory_lengths: str = typer.Option("8,64", "--memory-lengths", help="Series lengths for the peak-memory runs (comma separated; empty to skip)."),
    memory_ngf: int = typer.Option(8, "--memory-ngf", min=1, help="Generator width for the memory runs (small = fast; the model's own memory does not depend on series length)."),
    out: Path | None = typer.Option(None, "--out", help="Also write the results as JSON here."),
) -> None:
    """Benchmark denoise: end to end vs model only vs FLOP floor; peak memory vs series length."""
    import tempfile

    from rich.table import Table

    from ldct_monai.bench.denoise import run_memory_probe, run_throughput
    from ldct_monai.io_utils import atomic_write_text
    from ldct_monai.progress import console
    from ldct_monai.schema import DICOM_OUTPUT_PRECISIONS

    if precision not in DICOM_OUTPUT_PRECISIONS:
        from ldct_monai.errors import InputError

        raise InputError(f"--precision must be {' or '.join(DICOM_OUTPUT_PRECISIONS)}, found {precision!r}.")
    lengths = [int(v) for v in memory_lengths.split(",") if v.strip()]
    with tempfile.TemporaryDirectory(prefix="ldct-bench-denoise-") as tmp:
        tmp = Path(tmp)
        res = run_throughput(tmp, slices=slices, size=size, ngf=ngf, n_blocks=n_blocks, model=model, batch_size=batch_size,
                             device=device, precision=precision, tile=tile, workers=workers)
        mem = [run_memory_probe(tmp, n, size=size, ngf=memory_ngf, batch_size=batch_size, device=device, precision=precision, tile=tile, workers=workers)
               for n in lengths]
    res["memory"] = mem

    table = Table(title=f"denoise: {slices} slices {size}x{size}, {res['model_desc']}, {res['device']} {precision}, batch {batch_size}, {res['mode']}")
    table.add_column("measure")
    table.add_column("slices/s", justify="right")
    table.add_column("s/slice", justify="right")
    table.add_column("ratio", justify="right")
    e2e, mod, floor = res["end_to_end"], res["model_only"], res["flop_floor"]
    table.add_row("end to end (read+model+write)", f"{e2e['slices_per_s']:.3f}", f"{1 / e2e['slices_per_s']:.4f}", f"{res['ratio_e2e_to_model']:.3f}x model")
    table.add_row("  its model time", "", f"{e2e['model_s_inside'] / slices:.4f}", f"e2e {res['ratio_e2e_to_model_in_run']:.3f}x")
    table.add_row("model only (slices in memory)", f"{mod['slices_per_s']:.3f}", f"{1 / mod['slices_per_s']:.4f}", f"{res['ratio_model_to_floor']:.3f}x floor")
    table.add_row(f"FLOP floor {floor['gflop_per_slice']:.1f} GFLOP@{floor['peak_tflops']:.3f} TFLOP/s", f"{1 / floor['s_per_slice']:.3f}", f"{floor['s_per_slice']:.4f}", "1")
    console.print(table)
    if mem:
        mt = Table(title=f"peak memory vs series length ({size}x{size}, ngf={memory_ngf}, child process per run)")
        for col in ("slices", "peak RSS MiB", "RSS at end MiB", "peak GPU MiB", "float32 volume MiB", "slices/s"):
            mt.add_column(col, justify="right")
        for m in mem:
            mt.add_row(str(m["slices"]), f"{m['peak_rss_mib']:.0f}", "-" if m.get("rss_end_mib") is None else f"{m['rss_end_mib']:.0f}",
                       "-" if m["peak_gpu_mib"] is None else f"{m['peak_gpu_mib']:.0f}",
                       f"{m['volume_f32_mib']:.0f}", f"{m['slices_per_s']:.2f}")
        console.print(mt)
    if out is not None:
        atomic_write_text(out, json.dumps(res, indent=2) + "\n")
    typer.echo(json.dumps({"ratio_e2e_to_model": res["ratio_e2e_to_model"], "ratio_e2e_to_model_in_run": res["ratio_e2e_to_model_in_run"],
                           "ratio_model_to_floor": res["ratio_model_to_floor"],
                           "memory_peak_rss_mib": {m["slices"]: round(m["peak_rss_mib"], 1) for m in mem}}))
