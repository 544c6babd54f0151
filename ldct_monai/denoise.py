"""Denoise one CT series into a derived DICOM series of the same study: the library under ``ldct-monai denoise``.

:func:`denoise_series` reads and validates the series (:mod:`ldct_monai.dicom.reader`), runs the trained model
(:mod:`ldct_monai.inference`) or a classical method of :mod:`ldct_monai.baselines`, and writes the derived
series atomically (:mod:`ldct_monai.dicom.writer`), streaming reads and writes around the model. ``demo`` and
``bench denoise`` call it too. See ``docs/denoise.md``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import logging
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

from ldct_monai.errors import InputError

log = logging.getLogger(__name__)


def denoise_series(
    series_dir: str | Path,
    out_dir: str | Path,
    model_path: str | Path | None = None,
    *,
    method: str = "model",
    strength: float | None = None,
    device: str = "auto",
    precision: str = "fp32",
    batch_size: int = 4,
    tile: int | None = None,
    overlap: float = 0.25,
    series_uid: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
    workers: int | None = None,
) -> dict[str, Any]:
    """Denoise one CT series into a derived DICOM series of the same study, written atomically.

    Args:
        series_dir: folder holding the series (searched recursively; other files are ignored).
        out_dir: output folder; created atomically (temporary sibling, then rename).
        model_path: a run folder or its ``model/`` folder (card + weights), or a shipped model's name; None:
            the shipped default (``ldct-monai models``); for ``method="model"`` only.
        method: "model" (the trained generator), or a classical method of :mod:`ldct_monai.baselines`:
            "bm3d", "nlm" or "gaussian" (CPU, one slice at a time, no model needed).
        strength: classical methods only: Gaussian sigma in px, or the multiplier k of each slice's
            noise estimate (NLM h = k sigma_hat, BM3D sigma_psd = k sigma_hat); the documented
            default (``baselines.DEFAULT_STRENGTH``) when None.
        device: "auto", "cpu" or "cuda[:N]".
        precision: "fp32" (default), "bf16" or "fp16" autocast.
        batch_size: slices (or tiles) per forward pass.
        tile: None for full slices, else tile size in pixels (MONAI SlidingWindowInferer).
        overlap: tile overlap fraction (tiled mode).
        series_uid: SeriesInstanceUID to pick when ``series_dir`` holds several series.
        overwrite: replace an existing non-empty ``out_dir``.
        progress: show a progress bar.
        workers: worker processes for reading/decoding and packing/writing; 0 uses two threads in this
            process instead. None: 0 on CPU (the model already uses every core), on CUDA
            min(8, cores // 2) (Python-level DICOM work would otherwise throttle a fast GPU). Workers
            are started with ``spawn``: a calling script needs the ``if __name__ == "__main__":`` guard.

    Returns:
        Summary: ``n_slices``, ``series_instance_uid`` (output), ``source_series_instance_uid``,
        ``series_number``, ``out_dir``, ``files``, ``method``, ``parameters`` (classical methods: the
        strength, the noise estimates, seconds per slice), ``model`` (the model's or method's name),
        ``card_hash`` (None for classical methods), ``device``, ``precision``, ``mode``,
        ``skipped_files`` and ``timings`` (``scan_s``, ``load_model_s``, ``denoise_s``, ``model_s``,
        ``total_s``, ``slices_per_s``).

    Raises:
        InputError: bad series, model, options or output location (nothing is written).
        OutputExistsError: ``out_dir`` exists, is not empty and ``overwrite`` is False.
    """
    from ldct_monai import __version__
    from ldct_monai.dicom.reader import decode_hu, read_series
    from ldct_monai.dicom.writer import DerivedSeries, write_denoised_slice, write_denoised_slice_from_file
    from ldct_monai.inference import Denoiser, denoise_stream
    from ldct_monai.io_utils import atomic_output_dir, check_output_dir
    from ldct_monai.modelio import load_model
    from ldct_monai.progress import make_progress

    t0 = time.perf_counter()
    method = _check_method_options(method, model_path, strength, precision, tile)
    series_dir, out_dir = Path(series_dir), Path(out_dir)
    _check_not_nested(series_dir, out_dir)
    check_output_dir(out_dir, overwrite)  # fail before any heavy work
    series = read_series(series_dir, series_uid)
    t_scan = time.perf_counter()
    model = None
    if method == "model":
        from ldct_monai.models import resolve_model

        model = load_model(resolve_model(model_path))  # no --model: the shipped default (ldct-monai models)
        denoiser = Denoiser(model, device=device, precision=precision, batch_size=batch_size, tile=tile, overlap=overlap)
        window = model.hu_window
        card = model.card
        label, keep_above = model.name, window.high
        derivation = (
            f"Denoised by ldct-monai {__version__} with model '{model.name}' "
            f"(card sha256 {model.card_hash}, step {card.get('step')}, manifest {card.get('manifest_hash')}): "
            f"low-dose to full-dose ResNet generator, HU window [{window.low:g}, {window.high:g}], "
            f"{precision}, {denoiser.mode}. Pixels outside the field of view and above {window.high:g} HU keep "
            "their source values."
        )
    else:
        from ldct_monai.baselines import ClassicalDenoiser
        from ldct_monai.metrics import FULL_RANGE_HU

        denoiser = ClassicalDenoiser(method, strength)
        label, keep_above = method, FULL_RANGE_HU[1]
        derivation = (
            f"Denoised by ldct-monai {__version__} with method {method}: {denoiser.describe()}; "
            f"{denoiser.mode}. Pixels outside the field of view and above {keep_above:g} HU keep their source values."
        )
    t_model = time.perf_counter()
    first = series.header(0)  # minted UIDs set, unreadable vendor elements dropped (as the slices are read)
    outside: list[str] = []
    if model is not None:  # a kernel, pixel size or thickness the model never saw: say so (ldct_monai.domain)
        from ldct_monai.domain import warn_if_outside

        outside = warn_if_outside(card.get("training_domain"), first, str(series_dir), model.name)
    derived = DerivedSeries.for_source(first, what=f"denoised {label}", derivation_description=derivation, model_name=label)
    width = max(4, len(str(len(series))))
    names = [f"IM-{i + 1:0{width}d}.dcm" for i in range(len(series))]
    refs, rows, cols = series.slices, series.rows, series.columns
    n_workers = default_workers(denoiser.device) if workers is None else int(workers)
    files: list[Path] = []

    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(atomic_output_dir(out_dir, overwrite=overwrite))
        if n_workers > 0:
            # worker processes read/decode and pack/write, so the GIL never throttles a fast GPU;
            # spawn (not fork): safe with CUDA and with threads running in this process
            pool = stack.enter_context(cf.ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn")))
            stack.callback(pool.shutdown, wait=True, cancel_futures=True)

            def load(i: int) -> tuple[int, Any]:
                return i, pool.submit(decode_hu, refs[i], i, rows, cols).result()

            def save(i: int, hu_out: Any) -> Path:
                return pool.submit(write_denoised_slice_from_file, refs[i], i, rows, cols, hu_out, derived, tmp / names[i], keep_above).result()

            io_threads = n_workers
        else:

            def load(i: int) -> tuple[int, Any]:
                s = series.read_slice(i)
                return s, s.hu

            def save(s: Any, hu_out: Any) -> Path:
                return write_denoised_slice(s, hu_out, derived, tmp / names[s.index], keep_above)

            io_threads = 2
        bar = stack.enter_context(make_progress(disable=not progress))
        task = bar.add_task("Denoising", total=len(series), unit="slice")

        def saved(payload: Any) -> None:
            i = payload if isinstance(payload, int) else payload.index
            files.append(out_dir / names[i])
            bar.advance(task)

        stats = denoise_stream(
            denoiser, range(len(series)), load, save, read_ahead=max(2 * batch_size, 2 * io_threads),
            read_workers=io_threads, write_workers=io_threads, on_saved=saved,
        )
    t_end = time.perf_counter()
    return {
        "n_slices": len(series),
        "series_instance_uid": derived.series_instance_uid,
        "source_series_instance_uid": series.series_instance_uid,
        "series_number": derived.series_number,
        "series_description": derived.series_description,
        "out_dir": str(out_dir),
        "files": [str(f) for f in files],
        "method": method,
        "parameters": denoiser.parameters() if model is None else {"method": "model", "model": model.name},
        "model": label,
        "card_hash": model.card_hash if model is not None else None,
        "device": str(denoiser.device),
        "precision": precision,
        "mode": denoiser.mode,
        "workers": n_workers,
        "skipped_files": len(series.skipped),
        "outside_training_domain": outside,
        "timings": {
            "scan_s": round(t_scan - t0, 4),
            "load_model_s": round(t_model - t_scan, 4),
            "denoise_s": round(stats.wall_s, 4),
            "model_s": round(stats.model_s, 4),
            "wait_read_s": round(stats.wait_read_s, 4),
            "wait_write_s": round(stats.wait_write_s, 4),
            "total_s": round(t_end - t0, 4),
            "slices_per_s": round(stats.items_per_s, 3),
        },
    }


def _check_method_options(method: str, model_path: str | Path | None, strength: float | None, precision: str, tile: int | None) -> str:
    """``method`` lower-cased after checking that the other options fit it (every problem in one message)."""
    from ldct_monai.baselines import BASELINES, check_strength

    m = str(method).strip().lower()
    if m != "model" and m not in BASELINES:
        raise InputError(f"--method must be model, {', '.join(BASELINES)}; found {method!r}.")
    problems = []
    if m == "model":
        if strength is not None:
            problems.append("--strength applies to the classical methods (bm3d, nlm, gaussian), not to --method model")
    else:
        if model_path is not None:
            problems.append(f"--model is not used by --method {m} (leave it out, or use --method model)")
        if tile is not None:
            problems.append(f"--tile applies to --method model only, not to {m}")
        if precision != "fp32":
            problems.append(f"--precision applies to --method model only, not to {m}")
        if strength is not None:
            try:
                check_strength(m, strength)
            except InputError as err:
                problems.append(str(err).rstrip("."))
    if problems:
        raise InputError("; ".join(problems) + ".")
    return m


def default_workers(device: Any) -> int:
    """Worker processes for DICOM I/O: none on CPU, min(8, cores // 2) next to a GPU."""
    if getattr(device, "type", str(device)) == "cpu":
        return 0
    return max(1, min(8, (os.cpu_count() or 2) // 2))


def _check_not_nested(series_dir: Path, out_dir: Path) -> None:
    """The output must not be, contain or sit inside the input (overwrite would delete the input)."""
    src, dst = series_dir.resolve(), out_dir.resolve()
    if src == dst or src.is_relative_to(dst) or dst.is_relative_to(src):
        raise InputError(f"{out_dir}: OUT_DIR must be outside SERIES_DIR {series_dir} (and not contain it).")
