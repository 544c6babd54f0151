"""`ldct-monai demo`: the whole pipeline on built-in synthetic data."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import typer

from ldct_monai.progress import console


def _exported(model_dir: Path) -> str:
    """Which training step the exported generator comes from, and why (from its model card)."""
    from ldct_monai.modelio import read_card

    card = read_card(model_dir)
    sel = card.get("selection") or {}
    if sel.get("by") == "val-pairs":
        text = f"step {sel.get('step')} of {sel.get('last_step')}, the best paired val gain ({sel.get('gain_db', float('nan')):+.2f} dB)"
        if sel.get("step") == 0:
            text += ": no fine-tuning step beat the starting generator on val, so it was kept"
        return text
    if sel.get("by") != "val-noise":
        return f"generator of step {card.get('step')}"
    text = f"step {sel.get('step')} of {sel.get('last_step')}, chosen by validation noise"
    if sel.get("step") == 0:
        text += ": no validation pass made G(LD) less noisy, so the identity was kept and the model row equals the input"
    return text


def demo(
    out: Path = typer.Option(Path("demo_out"), "--out", help="Workspace folder for data, manifest, run, report and DICOM output."),
    patients: int = typer.Option(5, help="Synthetic patients per body part (C, L, N)."),
    slices: int = typer.Option(6, help="Slices per series."),
    size: int = typer.Option(256, help="Image size in pixels (rows = columns)."),
    steps: int = typer.Option(200, help="Fine-tuning steps of the CycleGAN from the shipped model (in the first quarter only its noise generator and discriminators learn)."),
    seed: int = typer.Option(0, help="Seed for data, splits and training."),
    device: str = typer.Option("auto", help="auto (GPU when present), cpu or cuda."),
    quick: bool = typer.Option(False, "--quick", help="Reduced smoke run (tiny images, a few steps): checks the plumbing, not quality."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing non-empty --out folder."),
) -> None:
    """Run the whole pipeline on synthetic data: synth, build-manifest, train, evaluate, denoise."""
    from ldct_monai.demo import DemoConfig, run_demo
    from ldct_monai.report import print_summary

    if quick:
        cfg = replace(DemoConfig.make_quick(seed=seed), device=device)
    else:
        cfg = DemoConfig(patients=patients, slices=slices, size=size, steps=steps, seed=seed, device=device)
    result = run_demo(out, cfg, overwrite=overwrite)
    console.rule("[bold]Demo result")
    print_summary(result["evaluation"], console=console)
    p = result["paths"]
    t = result["timings_s"]
    console.print(
        f"Measured wall time: [bold]{t['total']:.0f} s[/] "
        f"(synth {t['synth']:.0f} s, manifest {t['build_manifest']:.0f} s, train {t['train']:.0f} s, "
        f"evaluate {t['evaluate']:.0f} s, denoise {t['denoise']:.0f} s)"
    )
    console.print(f"Report:          {p['summary_md']}")
    console.print(f"Figures:         {Path(p['report']) / 'figures'}  ({len(p['figures'])} PNG)")
    console.print(f"Model:           {p['model']}  ({_exported(Path(p['model']))})")
    console.print(f"Denoised DICOM:  {p['denoised_series']}  (from {p['denoised_source']})")
    console.print(f"TensorBoard:     tensorboard --logdir {Path(p['model']).parent}")
