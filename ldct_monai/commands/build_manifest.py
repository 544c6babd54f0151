"""`ldct-monai build-manifest` command."""

from __future__ import annotations

from pathlib import Path

import typer

from ldct_monai.errors import InputError


def _parse_ratios(text: str) -> tuple[float, float, float]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != 3:
        raise InputError(f"--ratios: expected three comma-separated numbers train,val,test (e.g. 0.7,0.2,0.1), found {text!r}.")
    return vals  # type: ignore[return-value]


def build_manifest(
    data_root: Path = typer.Argument(..., help="Root of the DICOM tree (e.g. the TCIA LDCT download)."),
    out: Path = typer.Option(Path("manifests"), "--out", "-o", help="Manifest folder to write."),
    seed: int = typer.Option(0, "--seed", help="Key of the split hashes: same seed + same tree = same CSVs."),
    ratios: str = typer.Option("0.7,0.2,0.1", "--ratios", help="train,val,test fractions per body part (LDCTBench 0.7,0.2,0.1; MathWorks 0.8,0.1,0.1)."),
    workers: int = typer.Option(0, "--workers", "-j", help="Header-reading processes (0 = all cores)."),
    body_parts: str = typer.Option("", "--body-parts", help="Keep only these body parts, e.g. C,L (C chest, L abdomen, N head)."),
    max_patients: int = typer.Option(0, "--max-patients", help="At most this many patients per body part (smallest hash first; 0 = all)."),
    min_slices: int = typer.Option(1, "--min-slices", help="Skip series with fewer usable slices."),
    ld_pattern: str = typer.Option(r"\b(low|quarter)[\s_-]*dose\b", "--ld-pattern", help="Regex (case-insensitive) on SeriesDescription marking low dose."),
    fd_pattern: str = typer.Option(r"\bfull[\s_-]*dose\b", "--fd-pattern", help="Regex (case-insensitive) on SeriesDescription marking full dose."),
    default_dose: str = typer.Option("", "--default-dose", help="Dose ('low' or 'full') of series matching neither pattern; default: skip them."),
    default_body_part: str = typer.Option("", "--default-body-part", help="Body part (C, L, N) when neither PatientID nor BodyPartExamined tells; default: skip."),
    z_tolerance: float = typer.Option(0.25, "--z-tolerance", help="Test pairs: max |z_LD - z_FD| as a fraction of the slice spacing."),
    single_dose: bool = typer.Option(True, "--single-dose/--no-single-dose", help="Let full-dose-only (or low-dose-only) patients serve that dose in train/val."),
    paired: bool = typer.Option(False, "--paired", help="Also write train_pairs.csv / val_pairs.csv (train/val patients with both doses, matched on z) for supervised training."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing manifest folder."),
) -> None:
    """Scan a TCIA LDCT tree (headers only, in parallel) and write patient-disjoint train/val/test manifests."""
    from ldct_monai.manifest_builder import ManifestConfig, build_manifest as build, summary_table
    from ldct_monai.progress import console

    config = ManifestConfig(
        seed=seed,
        ratios=_parse_ratios(ratios),
        workers=workers or None,
        body_parts=tuple(b for b in body_parts.split(",") if b.strip()) or None,
        max_patients=max_patients or None,
        min_slices=min_slices,
        ld_pattern=ld_pattern,
        fd_pattern=fd_pattern,
        default_dose=default_dose.strip().lower() or None,
        default_body_part=default_body_part.strip() or None,
        z_tolerance=z_tolerance,
        single_dose=single_dose,
        paired=paired,
    )
    summary = build(data_root, out, config, overwrite=overwrite)
    console.print(summary_table(summary))
    console.print(f"[green]Wrote[/] {out} (splits.json, {', '.join(f'{k}.csv' for k in summary['rows'])}).", highlight=False)
