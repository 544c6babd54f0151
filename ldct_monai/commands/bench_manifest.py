"""`ldct-monai bench manifest`: header-scan throughput against a bare pydicom loop measured in the same run
(engine: :mod:`ldct_monai.bench.manifest`)."""

from __future__ import annotations

from pathlib import Path

import typer


def bench_manifest(
    files: int = typer.Option(5000, "--files", help="Files in the generated tree (at least 5000 for the target)."),
    workers: int = typer.Option(0, "--workers", "-j", help="Processes for both the floor and our scan (0 = all cores)."),
    size: int = typer.Option(16, "--size", help="Image size of the generated slices (pixels); headers are what is timed."),
    repeats: int = typer.Option(3, "--repeats", help="Timed runs of each, alternating; the best of each is reported."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Where the generated tree is kept (default: the system temp folder)."),
) -> None:
    """Header-scan throughput (files/s) next to the floor measured in the same run.

    The floor is a bare ``pydicom.dcmread(stop_before_pixels=True)`` loop over the same files with the
    same number of processes and the same pool; ours is the whole scan (listing, header decoding, every
    check). Both run on a warm page cache. Targets: ours >= 0.7 x floor and > 3,000 files/s on 2 cores.
    """
    from rich.table import Table

    from ldct_monai.bench.manifest import run_bench
    from ldct_monai.progress import console

    r = run_bench(files, workers, size, repeats, cache_dir)
    n, workers, floor_t, ours_t = r["files"], r["workers"], r["floor_s"], r["ours_s"]
    floor_best, ours_best, e2e = r["floor_best_s"], r["ours_best_s"], r["end_to_end_s"]
    cpu_floor, cpu_ours, sample = r["cpu_floor_s"], r["cpu_ours_s"], r["memory_sample"]
    table = Table(title=f"bench manifest: {n} files ({size}x{size} px), {workers} worker(s), best of {repeats}, warm")
    for col in ("measure", "seconds", "files/s", "x floor"):
        table.add_column(col, justify="right" if col != "measure" else "left")
    table.add_row("floor: bare dcmread(stop_before_pixels=True)", f"{floor_best:.3f}", f"{n / floor_best:,.0f}", "1.00")
    for name, secs in (("ldct-monai scan (list + headers + checks)", ours_best), ("build-manifest end to end", e2e)):
        table.add_row(name, f"{secs:.3f}", f"{n / secs:,.0f}", f"{floor_best / secs:.2f}")
    table.add_row("CPU per file in the workers: floor", "", f"{cpu_floor / n * 1e6:,.0f} us", "1.00")
    us = f"{cpu_ours / n * 1e6:,.0f} us"
    table.add_row("CPU per file in the workers: ldct-monai", "", us, f"{cpu_floor / cpu_ours:.2f}")
    console.print(table)
    ratio = floor_best / ours_best
    console.print(
        f"all runs (s): floor {', '.join(f'{t:.3f}' for t in floor_t)}; ours {', '.join(f'{t:.3f}' for t in ours_t)}\n"
        f"parent memory: {r['parent_bytes_per_row']:,.0f} bytes per slice row (tracemalloc peak, {sample} files, in-process)\n"
        f"targets: >= 0.70 x floor -> {'met' if ratio >= 0.7 else 'MISSED'} ({ratio:.2f}); "
        f"> 3,000 files/s -> {'met' if n / ours_best > 3000 else 'MISSED'} ({n / ours_best:,.0f})",
        highlight=False,
    )
