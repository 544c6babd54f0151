"""`ldct-monai denoise SERIES_DIR OUT_DIR --model MODEL`: a CT series in, a derived denoised series out.

``--method bm3d|nlm|gaussian`` denoises with a classical method of :mod:`ldct_monai.baselines` instead
(no model needed); the derived series records the method and its parameters in DerivationDescription.

The library entry point is :func:`ldct_monai.denoise.denoise_series` (used by ``demo`` and ``bench denoise``
too); this typer command only maps options onto it and prints the result. See
``docs/denoise.md``.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import typer

from ldct_monai.denoise import denoise_series
from ldct_monai.errors import InputError
from ldct_monai.schema import DICOM_OUTPUT_PRECISIONS

log = logging.getLogger(__name__)


def denoise(
    series_dir: Path = typer.Argument(..., help="Folder with the CT series (searched recursively)."),
    out_dir: Path = typer.Argument(..., help="Output folder for the derived DICOM series (created atomically)."),
    model: Path | None = typer.Option(None, "--model", "-m", help="Trained model: a MONAI bundle (RUN_DIR, RUN_DIR/model or a .zip of a bundle) or a shipped model's name (default: the shipped default model; see ldct-monai models)."),
    method: str = typer.Option("model", "--method", help="model (default: the trained model), or a classical method without a model: bm3d, nlm, gaussian."),
    strength: float | None = typer.Option(None, "--strength", help="Classical methods: Gaussian sigma in px, or k for NLM (h = k x noise, default 0.9) and BM3D (sigma_psd = k x noise, default 2.0)."),
    series_uid: str | None = typer.Option(None, "--series-uid", help="SeriesInstanceUID to denoise when SERIES_DIR holds several series."),
    batch_size: int = typer.Option(4, "--batch-size", min=1, help="Slices (or tiles) per forward pass."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda[:N]."),
    precision: str = typer.Option("fp32", "--precision", help="fp32 (default) or bf16 (see docs/denoise.md for its HU error)."),
    tile: int | None = typer.Option(None, "--tile", help="Tiled inference with this tile size in pixels (e.g. 128); full slices when omitted."),
    overlap: float = typer.Option(0.25, "--overlap", min=0.0, max=0.95, help="Tile overlap fraction (with --tile)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing non-empty OUT_DIR."),
    workers: int | None = typer.Option(None, "--workers", min=0, help="Worker processes for DICOM reading/writing (0: threads; default 0 on CPU, min(8, cores/2) on GPU)."),
) -> None:
    """Denoise a DICOM CT series into a derived DICOM series of the same study."""
    from rich.markup import escape

    from ldct_monai.progress import console

    if precision not in DICOM_OUTPUT_PRECISIONS:
        raise InputError(f"--precision must be {' or '.join(DICOM_OUTPUT_PRECISIONS)}, found {precision!r}.")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        try:
            summary = denoise_series(
                series_dir,
                out_dir,
                model,
                method=method,
                strength=strength,
                device=device,
                precision=precision,
                batch_size=batch_size,
                tile=tile,
                overlap=overlap,
                series_uid=series_uid,
                overwrite=overwrite,
                progress=True,
                workers=workers,
            )
        finally:
            for w in caught:
                if issubclass(w.category, RuntimeWarning):
                    console.print(f"[yellow]Warning:[/] {escape(str(w.message))}", highlight=False, soft_wrap=True)
                else:
                    log.debug("%s: %s", w.category.__name__, w.message)
    t = summary["timings"]
    params = summary["parameters"]
    if summary["method"] != "model":
        noise = params.get("noise_hu")
        console.print(
            f"Method {summary['method']} ({params['library']}), "
            + ", ".join(f"{k} {v:g}" for k, v in params.items() if k in ("k", "sigma_px"))
            + (f", noise estimate median {noise['median']:.1f} HU (range {noise['min']:.1f}-{noise['max']:.1f})" if noise else "")
            + f", {params.get('seconds_per_slice', float('nan')):.2f} s per slice.",
            highlight=False,
            soft_wrap=True,
            markup=False,
        )
    console.print(
        f"Wrote {summary['n_slices']} slices to {summary['out_dir']} "
        f"(series {summary['series_number']} '{summary['series_description']}', SeriesInstanceUID "
        f"{summary['series_instance_uid']}) in {t['total_s']:.1f} s, {t['slices_per_s']:.2f} slices/s on "
        f"{summary['device']}.",
        highlight=False,
        soft_wrap=True,
        markup=False,  # descriptions and paths may hold [brackets]
    )
