"""`ldct-monai evaluate`: paired test metrics, baselines and figures for a trained model."""

from __future__ import annotations

from pathlib import Path

import typer

from ldct_monai.errors import InputError


def parse_baselines(value: str) -> tuple[str, ...]:
    """'gaussian,nlm,bm3d' -> ('gaussian', 'nlm', 'bm3d'); 'none' or '' -> ()."""
    names = tuple(v.strip().lower() for v in value.split(",") if v.strip())
    if names in ((), ("none",)):
        return ()
    return names


def evaluate(
    manifest: Path = typer.Option(..., "--manifest", help="Manifest folder (test_pairs.csv, val_*.csv, splits.json)."),
    model: str | None = typer.Option(None, "--model", help="Trained model: a MONAI bundle (RUN_DIR, RUN_DIR/model or a .zip of a bundle) or a shipped model's name (default: the shipped default model; see ldct-monai models)."),
    out: Path = typer.Option(..., "--out", help="Report folder to create (metrics.csv, summary.*, figures/)."),
    device: str = typer.Option("auto", "--device", help="auto (GPU if present), cpu or cuda[:N]."),
    precision: str = typer.Option("fp32", "--precision", help="Inference precision: fp32, bf16 or fp16."),
    tile: int | None = typer.Option(None, "--tile", help="Tile size in px for tiled inference (default: whole slices)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Slices per forward pass."),
    baselines: str = typer.Option("gaussian,nlm,bm3d", "--baselines", help="Classical baselines: comma list of gaussian, nlm, bm3d; or none. BM3D takes ~10-20 s per 512 px slice on a CPU core pair."),
    max_slices: int | None = typer.Option(None, "--max-slices", help="Evaluate an evenly spaced subset of N test slices."),
    slices_per_body_part: int | None = typer.Option(None, "--slices-per-body-part", help="Evaluate N evenly spaced test slices of each body part (all of a body part with fewer)."),
    n_figures: int = typer.Option(3, "--n-figures", help="Slices to draw (0 for none)."),
    tune_slices: int = typer.Option(4, "--tune-slices", help="Val slices (pairs) per body part (and dose) used to tune the baselines."),
    tune_crop: int = typer.Option(192, "--tune-crop", help="Paired tuning runs on a centre crop of this many px (0: whole slices)."),
    gaussian_sigma: float | None = typer.Option(None, "--gaussian-sigma", help="Fixed Gaussian sigma in px (default: tuned on val)."),
    nlm_k: float | None = typer.Option(None, "--nlm-k", help="Fixed NLM multiplier: h = k x each slice's noise (default: tuned on val pairs, else 0.9)."),
    bm3d_k: float | None = typer.Option(None, "--bm3d-k", help="Fixed BM3D multiplier: sigma_psd = k x each slice's noise (default: tuned on val pairs, else 2.0)."),
    reference: str | None = typer.Option(None, "--reference", help="A second model scored on the same slices (a shipped model's name such as builtin, a folder or a zip), e.g. the shipped model beside a fine-tuned one."),
    per_body_part: bool = typer.Option(False, "--per-body-part", help="Also print table rows per body part."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing non-empty report folder."),
) -> None:
    """Paired test metrics (PSNR, SSIM, RMSE under two conventions), baselines and figures for a model."""
    from ldct_monai.evaluate import EvalConfig, evaluate as run_evaluate
    from ldct_monai.report import print_summary
    from ldct_monai.progress import console
    from ldct_monai.runtime import PRECISIONS

    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, found {precision!r}.")
    config = EvalConfig(
        device=device,
        precision=precision,
        tile=tile,
        batch_size=batch_size,
        baselines=parse_baselines(baselines),
        max_slices=max_slices,
        slices_per_body_part=slices_per_body_part,
        n_figures=n_figures,
        tune_slices=tune_slices,
        tune_crop=tune_crop or None,
        gaussian_sigma=gaussian_sigma,
        nlm_k=nlm_k,
        bm3d_k=bm3d_k,
        reference=reference,
    )
    from ldct_monai.models import resolve_model

    model_dir = resolve_model(model)  # no --model: the shipped default
    console.print(f"Model: {model_dir}", highlight=False)
    summary = run_evaluate(manifest, model_dir, out, config, overwrite=overwrite, progress=True)
    print_summary(summary, per_body_part=per_body_part)
    console.print(f"Report: {out / 'summary.md'} (and metrics.csv, summary.csv, summary.json)", highlight=False, soft_wrap=True)
    for f in summary["figures"]:
        console.print(f"Figures: {out / f['comparison']} {out / f['difference']}", highlight=False, soft_wrap=True)
