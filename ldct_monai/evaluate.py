"""Paired test evaluation: manifest + model -> per-slice metrics, summaries and figures.

:func:`evaluate` runs the model (through :class:`ldct_monai.inference.Denoiser`, the same path as
``denoise``) and the classical baselines on every low-dose slice of ``test_pairs.csv``, compares each
with its paired full-dose slice under both metric conventions of :mod:`ldct_monai.metrics`, and writes
into ``REPORT_DIR`` (atomically)::

    metrics.csv    one row per slice x method
    summary.csv    mean / std per body part (and "all") x method, with gains vs the low-dose input and
                   seconds per slice
    summary.md     the same as readable tables, with the conventions and baseline settings (how they
                   were tuned and the chosen strengths)
    summary.json   everything above plus provenance (model card hash, manifest hash, versions)
    figures/       LD | model | baselines | FD and difference maps for a few slices

The classical baselines (Gaussian, NLM, BM3D; :mod:`ldct_monai.baselines`) are tuned per body part
on paired val slices (``val_pairs.csv``) when the manifest has them, else the Gaussian filter by
unpaired noise matching and NLM / BM3D keep their default multipliers (``docs/evaluation.md``).

Deterministic: slices are chosen and ordered by (body part, patient, z); no random numbers are used.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ldct_monai.baselines import BASELINES, DEFAULT_STRENGTH, STRENGTH_NAMES
from ldct_monai.errors import InputError
from ldct_monai.metrics import LDCTBENCH_WINDOWS, METRIC_COLUMNS
from ldct_monai.report import ALL, INPUT, MODEL, REFERENCE, summarize, summary_dict, summary_markdown, write_figures
from ldct_monai.schema import BodyPart, body_part_of

log = logging.getLogger(__name__)

TEST_COLUMNS = ("patient_id", "body_part", "z", "ld_path", "fd_path")
VAL_PAIRS_FILE = "val_pairs.csv"  # paired val slices (build-manifest --paired); same columns as test_pairs.csv
NOISE_BASED = ("nlm", "bm3d")  # baselines whose strength multiplies the slice's own noise estimate
ID_COLUMNS = ("slice", "patient_id", "body_part", "z", "ld_sop_uid", "fd_sop_uid", "method", "window_center", "window_width")


@dataclass(frozen=True)
class EvalConfig:
    """Settings of one evaluation run (CLI options map one-to-one onto these fields)."""

    device: str = "auto"  # cuda when present, else cpu
    precision: str = "fp32"  # fp32 is what DICOM output uses; bf16/fp16 only to measure their effect
    tile: int | None = None  # tile size in px for tiled inference; None = whole slices
    batch_size: int = 4  # slices per forward pass
    baselines: tuple[str, ...] = BASELINES  # classical filters run on the same slices
    max_slices: int | None = None  # evenly spaced subset of the sorted test pairs; None = all
    slices_per_body_part: int | None = None  # evenly spaced subset of each body part's sorted test pairs; None = all
    n_figures: int = 3  # slices drawn (one per body part first)
    crop: float = 0.5  # centre crop side as a fraction of the slice side (figures)
    tune_slices: int = 4  # val slices (or pairs) per body part and dose to tune the baselines on
    tune_crop: int | None = 192  # px; paired tuning scores a centre crop (BM3D: ~3 s per crop and try, ~20 s per 512 px slice)
    gaussian_sigma: float | None = None  # px; fixed instead of tuned on val
    nlm_k: float | None = None  # h = k x slice noise; fixed instead of tuned on val pairs / the default 0.9
    bm3d_k: float | None = None  # sigma_psd = k x slice noise; fixed instead of tuned on val pairs / the default 2.0
    reference: str | None = None  # a second model (name, folder or zip) scored beside the model, e.g. "builtin"

    def __post_init__(self) -> None:
        object.__setattr__(self, "baselines", tuple(self.baselines))  # a list from Python callers is fine too
        problems = []
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            problems.append(f"unknown baseline(s) {', '.join(unknown)} (expected some of {', '.join(BASELINES)})")
        if len(set(self.baselines)) != len(self.baselines):
            problems.append(f"baselines listed twice: {', '.join(self.baselines)}")
        if self.batch_size < 1:
            problems.append(f"batch size must be >= 1, found {self.batch_size}")
        if self.max_slices is not None and self.max_slices < 1:
            problems.append(f"max slices must be >= 1, found {self.max_slices}")
        if self.slices_per_body_part is not None and self.slices_per_body_part < 1:
            problems.append(f"slices per body part must be >= 1, found {self.slices_per_body_part}")
        if self.n_figures < 0:
            problems.append(f"number of figures must be >= 0, found {self.n_figures}")
        if not 0.05 <= self.crop <= 1.0:
            problems.append(f"crop must be in [0.05, 1], found {self.crop}")
        if self.tune_slices < 1:
            problems.append(f"tune slices must be >= 1, found {self.tune_slices}")
        if self.tile is not None and self.tile < 16:
            problems.append(f"tile must be >= 16 px, found {self.tile}")
        if self.tune_crop is not None and self.tune_crop < 3 * 9:
            problems.append(f"tune crop must be >= 27 px (the noise estimate needs 3 windows of 9 px), found {self.tune_crop}")
        for name, v in (("Gaussian sigma (px)", self.gaussian_sigma), ("NLM k", self.nlm_k), ("BM3D k", self.bm3d_k)):
            if v is not None and not (math.isfinite(v) and v >= 0):
                problems.append(f"{name} must be a finite number >= 0, found {v}")
        if problems:
            raise InputError("evaluate: " + "; ".join(problems) + ".")

    @property
    def methods(self) -> tuple[str, ...]:
        return (INPUT, MODEL, *((REFERENCE,) if self.reference else ()), *self.baselines)


@dataclass
class _Pair:
    """One test pair after loading (arrays only for slices that get a figure)."""

    row: dict
    body_part: BodyPart
    images: dict[str, np.ndarray] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


def evaluate(
    manifest_dir: Path,
    model_path: Path,
    out_dir: Path,
    config: EvalConfig = EvalConfig(),
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Evaluate a model and the baselines on the paired test split; write the report folder.

    Args:
        manifest_dir: folder written by ``build-manifest`` (``test_pairs.csv``, ``val_*.csv``, ``splits.json``).
        model_path: ``RUN_DIR`` or ``RUN_DIR/model``.
        out_dir: report folder (created atomically; refused if non-empty unless ``overwrite``).
        config: run settings.
        overwrite: replace an existing non-empty ``out_dir``.
        progress: show rich progress bars (stderr).

    Returns:
        The summary (the content of ``summary.json``).

    Raises:
        InputError: bad manifest, model, slices or settings.
        OutputExistsError: ``out_dir`` is not empty and ``overwrite`` is False.
    """
    from ldct_monai.io_utils import atomic_output_dir, atomic_write_text, check_output_dir
    from ldct_monai.manifest import load_split, manifest_hash
    from ldct_monai.modelio import load_model
    from ldct_monai.progress import make_progress

    t_start = time.perf_counter()
    manifest_dir = Path(manifest_dir)
    out_dir = Path(out_dir)
    check_output_dir(out_dir, overwrite)  # fail before any work
    if "bm3d" in config.baselines:
        from ldct_monai.baselines import require_bm3d

        require_bm3d()
    pairs_df = _test_pairs(load_split(manifest_dir, "test_pairs"), manifest_dir)
    selected = _select(_select_per_body_part(pairs_df, config.slices_per_body_part), config.max_slices)
    model = load_model(model_path)
    denoiser = _make_denoiser(model, config)
    reference = None
    if config.reference:
        from ldct_monai.models import resolve_model

        reference = _make_denoiser(load_model(resolve_model(config.reference)), config)
    figure_idx = set(_figure_slices(selected, config.n_figures))
    timing: dict[str, float] = {}

    with make_progress(disable=not progress) as prog:
        t0 = time.perf_counter()
        params = _tune_baselines(manifest_dir, config, sorted({p.body_part for p in selected}, key=_bp_order), prog)
        timing["tune_baselines_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows, method_time, seconds = _run(selected, denoiser, config, params, figure_idx, prog, reference)
        timing["evaluate_s"] = time.perf_counter() - t0
        timing.update({f"{m}_s": v for m, v in method_time.items()})

    import pandas as pd

    metrics = pd.DataFrame(rows, columns=[*ID_COLUMNS, *METRIC_COLUMNS])
    seconds_df = pd.DataFrame(seconds, columns=["slice", "body_part", "method", "seconds", "noise_hu"])
    summary_df = summarize(metrics, config.methods, seconds_df)
    with atomic_output_dir(out_dir, overwrite=overwrite) as tmp:
        t0 = time.perf_counter()
        figures = write_figures(tmp, [selected[i] for i in sorted(figure_idx)], config, params)
        timing["figures_s"] = time.perf_counter() - t0
        timing["total_s"] = time.perf_counter() - t_start
        summary = summary_dict(
            metrics, summary_df, config, model, manifest_dir, manifest_hash(manifest_dir), denoiser, params, figures, timing, seconds_df
        )
        if reference is not None:
            ref = reference.model
            summary["reference_model"] = {"path": str(ref.path), "name": ref.name, "card_hash": ref.card_hash,
                                          "step": ref.card.get("step")}
            summary["method_labels"][REFERENCE] = f"{ref.name} (reference)"
        summary["out_dir"] = str(out_dir.resolve())
        atomic_write_text(tmp / "metrics.csv", metrics.to_csv(index=False, float_format="%.6g"))
        atomic_write_text(tmp / "summary.csv", summary_df.to_csv(index=False, float_format="%.6g"))
        atomic_write_text(tmp / "summary.md", summary_markdown(summary))
        atomic_write_text(tmp / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.info("evaluate: %d slices x %d methods -> %s", len(selected), len(config.methods), out_dir)
    return summary


def _test_pairs(df, manifest_dir: Path) -> list[_Pair]:
    missing = [c for c in TEST_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{manifest_dir / 'test_pairs.csv'}: missing column(s) {', '.join(missing)}.")
    if df.empty:
        raise InputError(f"{manifest_dir / 'test_pairs.csv'}: no test pairs (the test split is empty).")
    bad = sorted({str(v) for v in df["body_part"] if not _is_body_part(v)})
    if bad:
        raise InputError(
            f"{manifest_dir / 'test_pairs.csv'}: unknown body part(s) {', '.join(bad)} "
            "(expected C, L or N: the LDCTBench windows are defined for chest, abdomen and head)."
        )
    pairs = []
    for rec in df.to_dict("records"):
        rec = {k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in rec.items()}
        pairs.append(_Pair(row=rec, body_part=body_part_of(rec["body_part"])))
    pairs.sort(key=lambda p: (_bp_order(p.body_part), str(p.row["patient_id"]), float(p.row["z"])))
    return pairs


def _is_body_part(v: object) -> bool:
    try:
        body_part_of(str(v))
    except InputError:
        return False
    return True


def _bp_order(bp: BodyPart) -> int:
    return list(BodyPart).index(bp)


def _select(pairs: list[_Pair], max_slices: int | None) -> list[_Pair]:
    """All pairs, or ``max_slices`` evenly spaced over the sorted list (so every body part is hit)."""
    if max_slices is None or max_slices >= len(pairs):
        return pairs
    idx = np.unique(np.round(np.linspace(0, len(pairs) - 1, max_slices)).astype(int))
    return [pairs[i] for i in idx]


def _select_per_body_part(pairs: list[_Pair], n: int | None) -> list[_Pair]:
    """``n`` evenly spaced pairs of each body part (all of a body part with fewer), in the sorted order."""
    if n is None:
        return pairs
    out: list[_Pair] = []
    for bp in sorted({p.body_part for p in pairs}, key=_bp_order):
        out += _select([p for p in pairs if p.body_part == bp], n)
    return out


def _figure_slices(pairs: list[_Pair], n: int) -> list[int]:
    """Indices of ``n`` slices to draw: the middle slice of each body part first, then the next ones."""
    groups: dict[BodyPart, list[int]] = {}
    for i, p in enumerate(pairs):
        groups.setdefault(p.body_part, []).append(i)
    queues = []
    for g in groups.values():
        mid = (len(g) - 1) / 2
        queues.append([g[j] for j in sorted(range(len(g)), key=lambda j: (abs(j - mid), j))])
    out: list[int] = []
    while len(out) < min(n, len(pairs)):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return out


def _make_denoiser(model, config: EvalConfig):
    from ldct_monai.inference import Denoiser

    return Denoiser(model, device=config.device, precision=config.precision, batch_size=config.batch_size, tile=config.tile)


def _read_pair(pair: _Pair) -> tuple[np.ndarray, np.ndarray]:
    from ldct_monai.dicom.reader import read_hu

    ld = read_hu(pair.row["ld_path"])
    fd = read_hu(pair.row["fd_path"])
    if ld.shape != fd.shape:
        raise InputError(
            f"{pair.row['ld_path']}: low-dose slice is {ld.shape[1]}x{ld.shape[0]} px but its full-dose pair "
            f"{pair.row['fd_path']} is {fd.shape[1]}x{fd.shape[0]} px (expected the same size)."
        )
    return ld, fd


def _denoise_chunk(denoiser, lds: list[np.ndarray]) -> tuple[list[np.ndarray], float]:
    """A model on a chunk of LD slices: one forward pass when they share a size, else one each; and its seconds."""
    t0 = time.perf_counter()
    if len({ld.shape for ld in lds}) == 1:
        out = list(denoiser(np.stack(lds)))
    else:  # mixed slice sizes: one forward pass each
        out = [denoiser(ld) for ld in lds]
    return out, time.perf_counter() - t0


def _run(pairs: list[_Pair], denoiser, config: EvalConfig, params: dict, figure_idx: set[int], prog,
         reference=None) -> tuple[list[dict], dict, list[dict]]:
    """Denoise, filter and score every selected pair; keep the images of the figure slices.

    Returns:
        (metric rows, total seconds per method, one ``{slice, body_part, method, seconds, noise_hu}``
        row per slice and method). A slice's model time is its batch's time shared evenly; NLM and
        BM3D are charged the slice's noise estimate too (it is part of running them; its total is
        also listed on its own as ``noise_estimate``). ``noise_hu`` is sigma_hat of the low-dose
        slice (None when no baseline needs it).
    """
    from ldct_monai.baselines import apply_baseline, estimate_noise_std
    from ldct_monai.metrics import slice_metrics

    method_time = {m: 0.0 for m in (*config.methods[1:], "noise_estimate", "metrics")}
    task = prog.add_task("evaluate", total=len(pairs), unit="slice")
    rows: list[dict] = []
    seconds: list[dict] = []
    uses_noise = any(b in NOISE_BASED for b in config.baselines)
    for start in range(0, len(pairs), config.batch_size):
        chunk = pairs[start : start + config.batch_size]
        loaded = [_read_pair(p) for p in chunk]
        lds = [ld for ld, _ in loaded]
        den, model_s = _denoise_chunk(denoiser, lds)
        method_time[MODEL] += model_s
        ref_s, ref = 0.0, [None] * len(loaded)
        if reference is not None:
            ref, ref_s = _denoise_chunk(reference, lds)
            method_time[REFERENCE] += ref_s
        for k, (pair, (ld, fd), dn, rn) in enumerate(zip(chunk, loaded, den, ref)):
            bp = pair.body_part
            images = {INPUT: ld, MODEL: np.asarray(dn, dtype=np.float32)}
            spent = {INPUT: 0.0, MODEL: model_s / len(chunk)}
            if rn is not None:
                images[REFERENCE], spent[REFERENCE] = np.asarray(rn, dtype=np.float32), ref_s / len(chunk)
            noise_s, noise = 0.0, None
            if uses_noise:
                t0 = time.perf_counter()
                noise = estimate_noise_std(ld)
                noise_s = time.perf_counter() - t0
                method_time["noise_estimate"] += noise_s
            for b in config.baselines:
                t0 = time.perf_counter()
                strength = params[b]["per_body_part"][bp.value][STRENGTH_NAMES[b]]
                images[b] = apply_baseline(b, ld, strength, noise)
                spent[b] = time.perf_counter() - t0 + (noise_s if b in NOISE_BASED else 0.0)
                method_time[b] += spent[b]
            t0 = time.perf_counter()
            scores = slice_metrics(np.stack([images[m] for m in config.methods]), fd, bp, device=str(denoiser.device))
            method_time["metrics"] += time.perf_counter() - t0
            win = LDCTBENCH_WINDOWS[bp]
            for m, sc in zip(config.methods, scores):
                rows.append(
                    {
                        "slice": start + k,
                        "patient_id": str(pair.row["patient_id"]),
                        "body_part": bp.value,
                        "z": float(pair.row["z"]),
                        "ld_sop_uid": str(pair.row.get("ld_sop_uid", "")),
                        "fd_sop_uid": str(pair.row.get("fd_sop_uid", "")),
                        "method": m,
                        "window_center": win.center,
                        "window_width": win.width,
                        **sc,
                    }
                )
                seconds.append({"slice": start + k, "body_part": bp.value, "method": m, "seconds": spent[m], "noise_hu": noise})
            if start + k in figure_idx:
                pair.images = {**images, "full_dose": fd}
            prog.update(task, advance=1, info=f"{pair.row['patient_id']} z={float(pair.row['z']):.1f}")
    return rows, method_time, seconds


# --------------------------------------------------------------------------------------------------
# Baseline tuning on the val split
# --------------------------------------------------------------------------------------------------


def _tune_baselines(manifest_dir: Path, config: EvalConfig, body_parts: Sequence[BodyPart], prog) -> dict:
    """Per-body-part strengths of the baselines: fixed by the config, tuned on val, or the defaults.

    * Fixed (``gaussian_sigma`` / ``nlm_k`` / ``bm3d_k`` given): used as they are.
    * ``val_pairs.csv`` in the manifest: every other baseline is tuned per body part by windowed PSNR
      against the paired full-dose val slices (:func:`ldct_monai.baselines.tune_paired`).
    * Otherwise the Gaussian sigma is matched to the flat-region noise of the unpaired val full-dose
      slices, and NLM / BM3D keep their default multipliers.

    Body parts without val slices (pairs, or both doses) use values tuned on all val slices pooled.

    Returns:
        ``{baseline: {"criterion": str, "tuning": "fixed" | "val pairs" | "val noise matching" |
        "default", "per_body_part": {bp: {<strength name>: value, ...}}}}`` in ``config.baselines`` order.
    """
    if not config.baselines:
        return {}
    fixed = {"gaussian": config.gaussian_sigma, "nlm": config.nlm_k, "bm3d": config.bm3d_k}
    out: dict = {}
    for b in config.baselines:
        if fixed[b] is not None:
            out[b] = {
                "criterion": "fixed by the user",
                "tuning": "fixed",
                "per_body_part": {bp.value: {STRENGTH_NAMES[b]: float(fixed[b])} for bp in body_parts},
            }
    need = [b for b in config.baselines if fixed[b] is None]
    if need:
        pairs = _val_pairs(manifest_dir, config.tune_slices, config.tune_crop)
        if pairs:
            out.update(_tune_on_pairs(pairs, need, body_parts, prog))
        else:
            if "gaussian" in need:
                out["gaussian"] = _tune_gaussian_unpaired(manifest_dir, config, body_parts, prog)
            for b in need:
                if b in NOISE_BASED:
                    out[b] = {
                        "criterion": f"default multiplier of the slice noise (no {VAL_PAIRS_FILE} to tune on), docs/evaluation.md",
                        "tuning": "default",
                        "per_body_part": {bp.value: {STRENGTH_NAMES[b]: DEFAULT_STRENGTH[b]} for bp in body_parts},
                    }
    return {b: out[b] for b in config.baselines}


def _tune_on_pairs(pairs: dict[str, list], need: Sequence[str], body_parts: Sequence[BodyPart], prog) -> dict:
    """Paired tuning of each baseline in ``need`` per body part (pooled where a body part has no pairs)."""
    from ldct_monai.baselines import n_paired_steps, tune_paired

    groups = {bp.value: pairs[bp.value] for bp in body_parts if pairs.get(bp.value)}
    if len(groups) < len(body_parts):
        groups[ALL] = [p for ps in pairs.values() for p in ps]
    task = prog.add_task("tune baselines (val pairs)", total=len(groups) * len(need) * n_paired_steps(), unit="fit")
    tuned: dict[str, dict[str, dict]] = {b: {} for b in need}
    for key, group in groups.items():
        triples = [(ld, fd, win) for ld, fd, win, _ in group]
        noise = [n for *_, n in group]
        for b in need:
            step = lambda: prog.update(task, advance=1, info=f"{b} {key}")  # noqa: E731
            t = tune_paired(b, triples, on_step=step, noise_hu=noise)
            tuned[b][key] = {
                STRENGTH_NAMES[b]: t.param,
                "val_psnr_db": t.psnr_db,
                "val_input_psnr_db": t.input_psnr_db,
                "at_bound": t.at_bound,
                "n_val_pairs": t.n_pairs,
                "tried": [[round(p, 4), round(v, 4)] for p, v in t.tried],
            }
            if b in NOISE_BASED:
                tuned[b][key]["val_noise_hu"] = float(np.median(noise))
            if t.at_bound:
                log.warning("%s on body part %s: the best strength %.3g is at the edge of the search.", b, key, t.param)
    prog.update(task, completed=prog.tasks[task].total)
    out = {}
    for b in need:
        per_bp = {}
        for bp in body_parts:
            own = tuned[b].get(bp.value)
            per_bp[bp.value] = dict(own) if own is not None else {**tuned[b][ALL], "pooled": True}
        out[b] = {
            "criterion": f"windowed PSNR against the paired full-dose val slices ({VAL_PAIRS_FILE}), docs/evaluation.md",
            "tuning": "val pairs",
            "per_body_part": per_bp,
        }
    return out


def _tune_gaussian_unpaired(manifest_dir: Path, config: EvalConfig, body_parts: Sequence[BodyPart], prog) -> dict:
    """Gaussian sigma per body part matched to the flat-region noise of the unpaired val full-dose slices."""
    from ldct_monai.baselines import n_tune_steps, noise_level, tune_gaussian

    val = _val_slices(manifest_dir, config.tune_slices)
    groups: dict[str, tuple[list, list]] = {}
    for bp in body_parts:
        ld, fd = val.get(bp.value, ([], []))
        if ld and fd:
            groups[bp.value] = (ld, fd)
    if len(groups) < len(body_parts):
        pooled_ld = [im for ld, _ in val.values() for im in ld]
        pooled_fd = [im for _, fd in val.values() for im in fd]
        if not (pooled_ld and pooled_fd):
            raise InputError(
                f"{manifest_dir}: the val split has no low-dose and full-dose slices to tune the Gaussian baseline on "
                f"(add {VAL_PAIRS_FILE}, or give --gaussian-sigma, or leave gaussian out of --baselines)."
            )
        groups[ALL] = (pooled_ld, pooled_fd)

    task = prog.add_task("tune Gaussian (val noise)", total=len(groups) * n_tune_steps(), unit="fit")
    tuned: dict[str, dict] = {}
    for key, (ld, fd) in groups.items():
        target = noise_level(fd)
        if not math.isfinite(target):
            raise InputError(
                f"{manifest_dir}: no homogeneous soft tissue ([-50, 150] HU) found in the val full-dose slices "
                f"of body part {key}: cannot measure their noise (give --gaussian-sigma)."
            )
        step = lambda: prog.update(task, advance=1, info=f"{key}")  # noqa: E731
        t = tune_gaussian(ld, target, on_step=step)
        tuned[key] = {"sigma_px": t.param, **_tuned_facts(t, len(ld), len(fd))}
        if not t.reached:
            log.warning("gaussian on body part %s: could not match the full-dose noise %.1f HU (got %.1f HU).", key, target, t.noise_hu)
    prog.update(task, completed=prog.tasks[task].total)
    per_bp = {}
    for bp in body_parts:
        own = tuned.get(bp.value)
        per_bp[bp.value] = dict(own) if own is not None else {**tuned[ALL], "pooled": True}
    return {
        "criterion": "strength matched to the flat-region noise of the val full-dose slices, docs/evaluation.md",
        "tuning": "val noise matching",
        "per_body_part": per_bp,
    }


def _val_pairs(manifest_dir: Path, per_group: int, crop: int | None) -> dict[str, list] | None:
    """Up to ``per_group`` evenly spaced paired val slices per body part, from ``val_pairs.csv``.

    Returns:
        ``{body part: [(ld HU, fd HU, window, ld noise HU), ...]}`` (centre-cropped to ``crop`` px, the
        noise estimated on the whole low-dose slice), or None when the manifest has no (or an empty)
        ``val_pairs.csv``.

    Raises:
        InputError: the file lacks a column, or a pair's slices differ in size.
    """
    import pandas as pd

    from ldct_monai.baselines import estimate_noise_std
    from ldct_monai.manifest import data_root_of
    from ldct_monai.schema import PATH_COLUMNS

    path = Path(manifest_dir) / VAL_PAIRS_FILE
    if not path.is_file():
        return None
    df = pd.read_csv(path, dtype={"patient_id": str})
    missing = [c for c in TEST_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{path}: missing column(s) {', '.join(missing)}.")
    if df.empty:
        log.warning("%s: no pairs; baselines are tuned without them.", path)
        return None
    root = data_root_of(manifest_dir)
    for col in PATH_COLUMNS:
        if col in df.columns:
            df[col] = [str(p if Path(p).is_absolute() else root / p) for p in df[col].astype(str)]
    df = df.assign(_bp=[body_part_of(v).value if _is_body_part(v) else None for v in df["body_part"]])
    df = df[df["_bp"].notna()].sort_values(["_bp", "patient_id", "z"])
    out: dict[str, list] = {}
    for bp, g in df.groupby("_bp", sort=True):
        recs = g.to_dict("records")
        idx = np.unique(np.round(np.linspace(0, len(recs) - 1, min(per_group, len(recs)))).astype(int))
        for i in idx:
            pair = _Pair(row=recs[i], body_part=body_part_of(bp))
            ld, fd = _read_pair(pair)
            out.setdefault(bp, []).append((_centre_crop(ld, crop), _centre_crop(fd, crop), LDCTBENCH_WINDOWS[pair.body_part], estimate_noise_std(ld)))
    return out or None


def _centre_crop(x: np.ndarray, size: int | None) -> np.ndarray:
    if size is None:
        return x
    h, w = x.shape
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return x[top : top + size, left : left + size]


def _tuned_facts(t, n_ld: int, n_fd: int) -> dict:
    return {
        "val_ld_noise_hu": t.input_noise_hu,
        "val_fd_noise_hu": t.target_hu,
        "filtered_noise_hu": t.noise_hu,
        "reached": t.reached,
        "n_val_ld": n_ld,
        "n_val_fd": n_fd,
    }


def _val_slices(manifest_dir: Path, per_group: int) -> dict[str, tuple[list, list]]:
    """Up to ``per_group`` evenly spaced val slices (HU) per body part and dose."""
    from ldct_monai.dicom.reader import read_hu
    from ldct_monai.manifest import load_split

    out: dict[str, tuple[list, list]] = {}
    for dose_i, split in enumerate(("val_ld", "val_fd")):
        try:
            df = load_split(manifest_dir, split)
        except InputError:
            log.warning("%s: no %s split; baselines are tuned without it.", manifest_dir, split)
            continue
        if df.empty:
            continue
        for col in ("body_part", "path"):
            if col not in df.columns:
                raise InputError(f"{manifest_dir / (split + '.csv')}: missing column {col!r}.")
        df = df.assign(_bp=[body_part_of(v).value if _is_body_part(v) else None for v in df["body_part"]])
        df = df[df["_bp"].notna()]
        sort_cols = [c for c in ("patient_id", "z", "path") if c in df.columns]
        for bp, g in df.sort_values(sort_cols).groupby("_bp", sort=True):
            paths = list(g["path"])
            idx = np.unique(np.round(np.linspace(0, len(paths) - 1, min(per_group, len(paths)))).astype(int))
            out.setdefault(bp, ([], []))[dose_i].extend(read_hu(paths[i]) for i in idx)
    return out


