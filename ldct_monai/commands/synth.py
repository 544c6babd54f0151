"""`ldct-monai synth` command: a synthetic TCIA-style LDCT tree, or a low-dose copy of a real series."""

from __future__ import annotations

from pathlib import Path

import typer

from ldct_monai.errors import InputError


def synth(
    out_dir: Path = typer.Argument(..., help="Output tree (or, with --from-series, the new low-dose series folder)."),
    patients: int = typer.Option(1, "--patients", "-n", help="Patients per body part (C, L, N)."),
    slices: int = typer.Option(8, "--slices", "-s", help="Slices per series."),
    size: int = typer.Option(128, "--size", help="Image rows = columns, pixels (clinical: 512)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed writes identical files."),
    slice_thickness: float = typer.Option(
        1.0, "--slice-thickness", help="Slice thickness = spacing, mm (Mayo: 1 or 3)."
    ),
    kernel: str | None = typer.Option(
        None, "--kernel", help="Reconstruction kernel: smooth (B30f-like), standard (B40f-like) or sharp (D45f-like) for every "
        "body part; auto (default): phantom trees use chest sharp, abdomen and head standard, --from-series / "
        "--from-tree the noise texture measured on each series."
    ),
    dose_fraction: str | None = typer.Option(
        None,
        "--dose-fraction",
        help="Low-dose fraction: one value for every body part, or per part as C=0.05,L=0.2 "
        "(default: 0.25; chest 0.10).",
    ),
    no_ld_share: float = typer.Option(
        0.0, "--no-ld-share", help="Share of patients without a low-dose series (TCIA GE exams: ~0.5)."
    ),
    body_parts: str = typer.Option("CLN", "--body-parts", help="Body parts to write: any of C, L, N."),
    views: int | None = typer.Option(None, "--views", help="Projections over 180 degrees (default: --size)."),
    from_series: Path | None = typer.Option(
        None, "--from-series", help="Real full-dose series folder: write its simulated low-dose series to OUT_DIR."
    ),
    from_tree: Path | None = typer.Option(
        None, "--from-tree", help="Folder of real full-dose series: write a paired TCIA-style tree to OUT_DIR, one "
        "patient per series (real full dose + simulated low dose)."
    ),
    body_part: str | None = typer.Option(
        None, "--body-part", help="With --from-series / --from-tree: C, L or N (default: from BodyPartExamined); "
        "with --from-tree also FOLDER=C,FOLDER2=L pairs."
    ),
    slab_slices: int = typer.Option(
        0, "--slab-slices", help="With --from-tree: cut each series into slabs of this many slices, one patient each "
        "(more patients for splits when there are few real series)."
    ),
    sharpen: float = typer.Option(
        0.0, "--sharpen", help="With --from-tree: emulate a sharper reconstruction kernel by unsharp-masking the "
        "full-dose images with this gain (1 + gain at high frequency) before the low dose is simulated (default 0: off)."
    ),
    electronic_noise: float | None = typer.Option(
        None, "--electronic-noise", help="With --from-series / --from-tree: electronic noise std, photons per ray at "
        "the reference sampling (default 0: off; the phantom trees use 2.5)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a non-empty OUT_DIR."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Write a physics-based synthetic low-dose / full-dose CT tree laid out like TCIA LDCT-and-Projection-data.

    Phantoms are forward-projected, scanned with Poisson + electronic noise at full dose, given
    projection-domain noise for the low dose (Yu et al. 2012) and reconstructed by FBP. With
    --from-series, the same noise insertion turns a real full-dose series into a low-dose one.
    """
    from rich.table import Table

    from ldct_monai.progress import console
    from ldct_monai.synth import SynthConfig, simulate_low_dose_series, synth_tree

    fraction, per_part = _parse_fractions(dose_fraction)
    if from_series is not None and from_tree is not None:
        raise InputError("--from-series and --from-tree exclude each other: give one.")
    if sharpen and from_tree is None:
        raise InputError("--sharpen needs --from-tree (it sharpens the real full-dose images).")
    if from_series is not None or from_tree is not None:
        if per_part:
            raise InputError("--dose-fraction with --from-series / --from-tree takes one value, not per-body-part values.")
        if from_tree is not None:
            _from_tree(from_tree, out_dir, body_part, fraction, kernel or "auto", electronic_noise, seed, views,
                       slab_slices, sharpen, overwrite, quiet)
            return
        summary = simulate_low_dose_series(
            from_series, out_dir, dose_fraction=fraction, body_part=body_part, kernel=kernel or "auto",
            electronic_noise=electronic_noise, seed=seed, n_views=views, overwrite=overwrite, progress=not quiet,
        )
        check = summary["check"]
        console.print(
            f"Wrote {summary['files']} low-dose slices to {summary['out_dir']} "
            f"(body part {summary['body_part']}, dose fraction {summary['dose_fraction']:g}, kernel "
            f"{summary['kernel'] or '-'} [{summary['kernel_class']}], noise texture {summary['texture']}) "
            f"in {summary['seconds']:.1f} s.\n"
            f"Full-dose noise {check['fd_std_hu']:.1f} HU, NPS peak {check['fd_peak']:.3f} cycles/pixel; inserted "
            f"{check['inserted_std_hu']:.1f} HU (target {check['target_std_hu']:.1f}), peak "
            f"{check['inserted_peak']:.3f} ({check['rois']} flat ROIs).",
            highlight=False,
        )
        return
    kernel = kernel or "auto"  # phantom trees: chest sharp, abdomen and head standard
    parts = tuple(dict.fromkeys(body_parts.upper().replace(",", "")))
    if not parts or any(p not in "CLN" for p in parts):
        raise InputError(f"--body-parts must be letters among C, L, N, found {body_parts!r}.")
    config = SynthConfig(
        patients=patients, slices=slices, size=size, seed=seed, slice_thickness=slice_thickness, kernel=kernel,
        dose_fraction=fraction, dose_fractions=per_part, no_ld_share=no_ld_share, body_parts=parts, n_views=views,
    )
    summary = synth_tree(out_dir, config, progress=not quiet, overwrite=overwrite)
    table = Table(title=f"{summary['files']} files, {summary['series']} series in {summary['out_dir']} "
                        f"({summary['seconds']:.1f} s)")
    for col in ("body part", "patients", "FD noise HU", "LD noise HU", "std(LD-FD) HU", "PSNR dB"):
        table.add_column(col, justify="right")
    for bp in config.body_parts:
        nz = summary["noise"].get(bp, {})
        keys = ("fd_std_hu", "ld_std_hu", "diff_std_hu", "psnr_db")
        table.add_row(bp, str(len(summary["patients"][bp])), *(f"{nz[k]:.1f}" if k in nz else "-" for k in keys))
    console.print(table)
    if summary["no_low_dose"]:
        console.print(f"Without a low-dose series: {', '.join(summary['no_low_dose'])}", highlight=False)


def _parse_fractions(text: str | None) -> tuple[float | None, tuple[tuple[str, float], ...]]:
    """``"0.2"`` -> (0.2, ()); ``"C=0.05,L=0.2"`` -> (None, (("C", 0.05), ("L", 0.2)))."""
    if text is None:
        return None, ()
    try:
        if "=" not in text:
            return float(text), ()
        pairs = []
        for item in text.split(","):
            key, value = item.split("=")
            pairs.append((key.strip().upper(), float(value)))
        return None, tuple(pairs)
    except ValueError as err:
        raise InputError(f"--dose-fraction expects a number or C=0.05,L=0.2 style pairs, found {text!r}.") from err


def _from_tree(source: Path, out_dir: Path, body_part: str | None, fraction: float | None, kernel: str,
               electronic_noise: float | None, seed: int, views: int | None, slab_slices: int, sharpen: float,
               overwrite: bool, quiet: bool) -> None:
    from rich.table import Table

    from ldct_monai.progress import console
    from ldct_monai.synth.from_tree import synth_from_tree

    summary = synth_from_tree(source, out_dir, body_part=body_part, dose_fraction=fraction, kernel=kernel,
                              electronic_noise=electronic_noise, seed=seed, n_views=views, slab_slices=slab_slices,
                              sharpen=sharpen, overwrite=overwrite,
                              progress=not quiet)
    table = Table(title=f"{summary['files']} files, {len(summary['patients'])} patients in {summary['out_dir']} "
                        f"({summary['seconds']:.1f} s)")
    for col in ("patient", "source", "slices", "dose", "kernel", "texture", "FD noise HU", "inserted HU",
                "target HU", "FD / inserted NPS peak"):
        table.add_column(col)
    for p in summary["patients"]:
        c = p["check"]
        table.add_row(p["patient_id"], p["source"], str(p["slices"]), f"{p['dose_fraction']:g}",
                      f"{p['kernel'] or '-'} [{p['kernel_class']}]" + (f" {p['iterative']}" if p["iterative"] else ""),
                      p["texture"], f"{c['fd_std_hu']:.1f}", f"{c['inserted_std_hu']:.1f}", f"{c['target_std_hu']:.1f}",
                      f"{c['fd_peak']:.3f} / {c['inserted_peak']:.3f}")
    console.print(table)
    for s in summary["skipped"]:
        console.print(f"Skipped {s['source']}: {s['reason']}", highlight=False)
