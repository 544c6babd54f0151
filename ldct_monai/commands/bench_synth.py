"""`ldct-monai bench synth`: ``synth --from-series`` seconds per slice against the pre-issue-11 noise insertion,
interleaved in one process; peak memory vs series length (engine: :mod:`ldct_monai.bench.synth`)."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def bench_synth(
    slices: int = typer.Option(16, "--slices", min=1, help="Slices in the synthetic series of the --from-series runs (calibration is amortised over them)."),
    size: int = typer.Option(512, "--size", min=64, help="Rows = columns of the synthetic slices."),
    views: int = typer.Option(128, "--views", min=8, help="Projections over 180 degrees, both paths (the simulator's default is the image size; the cost of both grows about linearly with views, so fewer views are a stricter test of the fixed costs)."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Timed runs of each path, interleaved (median reported)."),
    memory_lengths: str = typer.Option("8,48,96", "--memory-lengths", help="Series lengths for the peak-memory runs (comma separated; empty to skip)."),
    memory_views: int = typer.Option(8, "--memory-views", min=8, help="Views for the memory runs (few = fast; one interpolation pass holds 8 views at 512 px, so the peak does not depend on it)."),
    trace: bool = typer.Option(True, "--trace/--no-trace", help="Also trace Python/numpy allocations in the memory runs (tracemalloc; slower)."),
    mmap_threshold: int = typer.Option(0, "--mmap-threshold", min=0, help="Fix glibc's malloc mmap threshold (bytes) in the memory runs, e.g. 131072 (0: glibc's dynamic default, what a user gets)."),
    out: Path | None = typer.Option(None, "--out", help="Also write the results as JSON here."),
) -> None:
    """Benchmark synth --from-series: s/slice vs the pre-issue noise insertion (same process); peak memory vs series length."""
    import tempfile

    from rich.table import Table

    from ldct_monai.bench.synth import run_memory_probe, run_throughput
    from ldct_monai.errors import InputError
    from ldct_monai.io_utils import atomic_write_text
    from ldct_monai.progress import console

    try:
        lengths = [int(v) for v in memory_lengths.split(",") if v.strip()]
    except ValueError as err:
        raise InputError(f"--memory-lengths must be comma-separated integers, found {memory_lengths!r}.") from err
    if any(n < 1 for n in lengths):
        raise InputError(f"--memory-lengths must be positive, found {memory_lengths!r}.")
    with tempfile.TemporaryDirectory(prefix="ldct-bench-synth-") as tmp, console.status("benchmarking synth ..."):
        tmp = Path(tmp)
        res = run_throughput(tmp, slices=slices, size=size, views=views, repeats=repeats)
        mem = [run_memory_probe(tmp, n, size=size, views=memory_views, trace=trace,
                                mmap_threshold=mmap_threshold) for n in lengths]
    res["memory"] = mem

    ref, cand = res["reference"], res["candidate"]
    table = Table(title=f"synth: {size}x{size}, {res['views']} views, abdomen 25 % dose, {res['threads']} threads, "
                        f"median of {repeats} interleaved runs")
    table.add_column("path")
    table.add_column("s/slice", justify="right")
    table.add_column("slices/s", justify="right")
    table.add_column("ratio", justify="right")
    table.add_row(f"reference: pre-issue insert_noise, {ref['chunk']} slices/call, no I/O", f"{ref['s_per_slice']:.3f}",
                  f"{1 / ref['s_per_slice']:.3f}", "1")
    table.add_row(f"--from-series, {slices}-slice series ({cand['texture']}, {cand['rois']} ROIs)", f"{cand['s_per_slice']:.3f}",
                  f"{1 / cand['s_per_slice']:.3f}", f"{res['ratio']:.2f}x")
    console.print(table)
    console.print(f"ratio = median of the per-repeat ratios {', '.join(f'{r:.2f}x' for r in res['ratio_per_repeat'])} "
                  f"(ratio of the medians {res['ratio_of_medians']:.2f}x); target <= 2x", highlight=False)
    if mem:
        malloc = f"mmap threshold {mmap_threshold} B" if mmap_threshold else "glibc default malloc"
        mt = Table(title=f"--from-series peak memory vs series length ({size}x{size}, {memory_views} views, {malloc}, child process per run; MiB)")
        for col in ("slices", "peak RSS", "after imports", "peak - imports", "traced peak", "f32 volume", "s/slice"):
            mt.add_column(col, justify="right")
        for m in mem:
            above = "-" if m["rss_base_mib"] is None else f"{m['peak_rss_mib'] - m['rss_base_mib']:.0f}"
            mt.add_row(str(m["slices"]), f"{m['peak_rss_mib']:.0f}", "-" if m["rss_base_mib"] is None else f"{m['rss_base_mib']:.0f}",
                       above, "-" if m["peak_traced_mib"] is None else f"{m['peak_traced_mib']:.1f}",
                       f"{m['volume_f32_mib']:.0f}", f"{m['s_per_slice']:.2f}")
        console.print(mt)
    if out is not None:
        atomic_write_text(out, json.dumps(res, indent=2) + "\n")
    typer.echo(json.dumps({"ratio": res["ratio"], "reference_s_per_slice": ref["s_per_slice"],
                           "candidate_s_per_slice": cand["s_per_slice"],
                           "memory_peak_rss_mib": {m["slices"]: round(m["peak_rss_mib"], 1) for m in mem}}))
