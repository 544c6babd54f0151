"""The reporting half of ``evaluate``: per-slice metrics -> summaries, ``summary.json``, Markdown, the
console table and the comparison figures. :mod:`ldct_monai.evaluate` runs the methods and calls these;
they only read what it measured (a summary can be re-rendered from ``summary.json`` alone).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ldct_monai import __version__
from ldct_monai.metrics import CONVENTIONS, LDCTBENCH_WINDOWS, METRIC_COLUMNS, METRIC_UNITS, METRICS, conventions_description, finite_or_none
from ldct_monai.schema import BodyPart, body_part_name

SUMMARY_FORMAT = 1
INPUT = "low_dose"  # the method name of the unprocessed low-dose row; gains are measured against it
MODEL = "model"
REFERENCE = "reference"  # a second model on the same slices (--reference), e.g. the shipped one beside a fine-tuned one
METHOD_LABELS = {INPUT: "low-dose input", MODEL: "model", REFERENCE: "reference model", "gaussian": "Gaussian filter", "nlm": "non-local means", "bm3d": "BM3D"}
ALL = "all"  # body-part value of the pooled rows in the summaries


# --------------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------------


def summarize(metrics, methods: Sequence[str], seconds=None):
    """Per body part (and pooled "all") x method: n, mean, std and the paired gain vs the low-dose input.

    The gain of a method is the mean (and std) over slices of ``metric(method) - metric(input)`` on the
    same slice; for RMSE a negative gain is an improvement. std is the sample std (ddof 1; 0 for n = 1).

    Args:
        metrics: the per-slice table (``metrics.csv``).
        methods: method names in report order.
        seconds: optional per slice x method run times (columns slice, body_part, method, seconds).

    Returns:
        pandas DataFrame with columns body_part, method, n, ``<metric>_{mean,std,gain_mean,gain_std}``
        and, with ``seconds``, ``seconds_per_slice`` (mean wall time of the method on one slice).
    """
    import pandas as pd

    recs = []
    key = ["slice"]
    parts = [bp for bp in (b.value for b in BodyPart) if bp in set(metrics["body_part"])]
    for bp in [*parts, ALL]:
        sub = metrics if bp == ALL else metrics[metrics["body_part"] == bp]
        base = sub[sub["method"] == INPUT].set_index(key)
        for m in methods:
            cur = sub[sub["method"] == m].set_index(key)
            rec = {"body_part": bp, "method": m, "n": int(len(cur))}
            for col in METRIC_COLUMNS:
                vals = cur[col].astype(float)
                gain = (vals - base[col].astype(float).reindex(vals.index)).to_numpy()
                rec[f"{col}_mean"] = _mean(vals.to_numpy())
                rec[f"{col}_std"] = _std(vals.to_numpy())
                rec[f"{col}_gain_mean"] = _mean(gain)
                rec[f"{col}_gain_std"] = _std(gain)
            if seconds is not None:
                sec = seconds[seconds["method"] == m] if bp == ALL else seconds[(seconds["method"] == m) & (seconds["body_part"] == bp)]
                rec["seconds_per_slice"] = _mean(sec["seconds"].to_numpy())
            recs.append(rec)
    return pd.DataFrame(recs)


def _mean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x)) if len(x) else float("nan")


def _std(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return 0.0 if len(x) else float("nan")
    if not np.all(np.isfinite(x)):
        return float("nan")
    return float(np.std(x, ddof=1))


def summary_dict(metrics, summary_df, config, model, manifest_dir, mhash, denoiser, params, figures, timing, seconds=None) -> dict:
    from ldct_monai.runtime import package_versions

    results: dict = {}
    for rec in summary_df.to_dict("records"):
        entry = {"n": rec["n"]}
        for col in METRIC_COLUMNS:
            entry[col] = {s: finite_or_none(rec[f"{col}_{s}"]) for s in ("mean", "std", "gain_mean", "gain_std")}
        if "seconds_per_slice" in rec:
            entry["seconds_per_slice"] = finite_or_none(rec["seconds_per_slice"])
        results.setdefault(rec["body_part"], {})[rec["method"]] = entry
    slices = metrics[metrics["method"] == INPUT]
    noise: dict = {}
    if seconds is not None and seconds["noise_hu"].notna().any():
        first = seconds[seconds["method"] == INPUT].dropna(subset=["noise_hu"])
        noise = {bp: round(float(np.median(g["noise_hu"])), 2) for bp, g in first.groupby("body_part")}
    return {
        "format": SUMMARY_FORMAT,
        "tool": f"ldct-monai {__version__} evaluate",
        "model": {
            "path": str(model.path),
            "name": model.name,
            "card_hash": model.card_hash,
            "step": model.card.get("step"),
            "hu_window": model.hu_window.asdict(),
        },
        "manifest": {"path": str(manifest_dir), "hash": mhash},
        "config": {**asdict(config), "baselines": list(config.baselines)},
        "device": str(denoiser.device),
        "precision": config.precision,
        "methods": list(config.methods),
        "method_labels": {m: METHOD_LABELS[m] for m in config.methods},
        "n_slices": int(len(slices)),
        "n_patients": int(slices["patient_id"].nunique()),
        "slices_per_body_part": {bp: int(n) for bp, n in slices.groupby("body_part").size().items()},
        "conventions": conventions_description(),
        "baselines": params,
        "baseline_tuning": {b: p["tuning"] for b, p in params.items()},
        "test_noise_hu_median": noise,  # sigma_hat of the test low-dose slices (NLM / BM3D scale with it)
        "seconds_per_slice": {m: results[ALL][m].get("seconds_per_slice") for m in config.methods},
        "results": results,
        "files": {"metrics": "metrics.csv", "summary_csv": "summary.csv", "summary_md": "summary.md"},
        "figures": figures,
        "timing_s": {k: round(v, 3) for k, v in timing.items()},
        "versions": package_versions(),
    }


def _fmt(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _fmt_seconds(x: float | None) -> str:
    if x is None:
        return "n/a"
    return f"{x:.2g}" if x < 1 else f"{x:.1f}"  # 2 significant digits: a Gaussian filter takes ~1 ms


def _baseline_setting(method: str, v: dict) -> str:
    """One line of the Baselines section: the strength and the facts of how it was chosen."""
    if method == "gaussian":
        s = f"sigma {v['sigma_px']:.3g} px"
    else:
        s = f"k {v['k']:.3g}"
    if "val_fd_noise_hu" in v:
        s += f"; val noise LD {v['val_ld_noise_hu']:.1f} HU -> {v['filtered_noise_hu']:.1f} HU (FD target {v['val_fd_noise_hu']:.1f} HU)"
    if "val_psnr_db" in v:
        s += (
            f"; windowed PSNR on {v['n_val_pairs']} val pairs {v['val_input_psnr_db']:.2f} -> {v['val_psnr_db']:.2f} dB"
            + (" [best at the edge of the search]" if v.get("at_bound") else "")
        )
    if v.get("pooled"):
        s += " [pooled over body parts]"
    return s


def _fmt_gain(x: float | None, digits: int) -> str:
    return "n/a" if x is None else f"{x:+.{digits}f}"


DIGITS = {"psnr": 2, "ssim": 4, "rmse": 1}


def summary_markdown(summary: dict) -> str:
    """``summary.md``: one table per convention (mean ± std, gain vs input), then settings and figures."""
    conv = summary["conventions"]
    labels = summary["method_labels"]
    lines = [
        "# ldct-monai evaluation",
        "",
        f"Model `{summary['model']['name']}` (card {summary['model']['card_hash']}, step {summary['model']['step']}) "
        f"on manifest {summary['manifest']['hash']}: {summary['n_slices']} paired test slices from "
        f"{summary['n_patients']} patients ("
        + ", ".join(f"{body_part_name(bp)} {n}" for bp, n in summary["slices_per_body_part"].items())
        + f"); device {summary['device']}, precision {summary['precision']}.",
        "",
        "Values are mean ± std over slices; Δ is the mean paired difference to the low-dose input "
        "(higher PSNR/SSIM and lower RMSE are better).",
    ]
    titles = {
        "full": "Full range [-1024, 3071] HU (data range 4095 HU; RMSE on the same range)",
        "ldctbench": "LDCTBench windows (chest C -600/W 1500, abdomen C 50/W 400, head C 40/W 80; RMSE on [-1024, 1900] HU)",
    }
    for c in CONVENTIONS:
        lines += ["", f"## {titles[c]}", ""]
        head = ["body part", "method"]
        for m in METRICS:
            unit = f" ({METRIC_UNITS[m]})" if METRIC_UNITS[m] else ""
            head += [f"{m.upper()}{unit}", f"Δ {m.upper()}"]
        head.append("s / slice")
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for bp, per_method in summary["results"].items():
            for method in summary["methods"]:
                e = per_method[method]
                cells = [f"{body_part_name(bp)} (n={e['n']})", labels[method]]
                for m in METRICS:
                    s = e[f"{m}_{c}"]
                    d = DIGITS[m]
                    cells.append(f"{_fmt(s['mean'], d)} ± {_fmt(s['std'], d)}")
                    cells.append("—" if method == INPUT else _fmt_gain(s["gain_mean"], d))
                cells.append("—" if method == INPUT else _fmt_seconds(e.get("seconds_per_slice")))
                lines.append("| " + " | ".join(cells) + " |")
    ss = conv["ssim"]
    lines += [
        "",
        "## Conventions",
        "",
        "- Fixed HU maps only, never per-image min-max normalisation (it would rescale each image by its own extremes "
        "and hide HU errors).",
        f"- SSIM: MONAI SSIMMetric, {ss['kernel_type']} window {ss['win_size']} px, sigma {ss['kernel_sigma']}, "
        f"K1 {ss['k1']}, K2 {ss['k2']}, data range 1 on the [0, 1] scale; PSNR: MONAI PSNRMetric, data range 1.",
    ]
    if summary["baselines"]:
        lines += [
            "",
            "## Baselines",
            "",
            "Strengths per body part: Gaussian sigma in px; NLM h = k x sigma_hat and BM3D sigma_psd = k x sigma_hat, "
            "sigma_hat the noise std estimated on each low-dose slice itself"
            + (
                " (median on the test slices: "
                + ", ".join(f"{body_part_name(bp)} {v:.1f} HU" for bp, v in summary.get("test_noise_hu_median", {}).items())
                + ")"
                if summary.get("test_noise_hu_median")
                else ""
            )
            + ".",
            "",
        ]
        for b, p in summary["baselines"].items():
            lines.append(f"- {labels[b]}, tuning: {p.get('tuning', 'n/a')} ({p['criterion']}):")
            for bp, v in p["per_body_part"].items():
                lines.append(f"  - {body_part_name(bp)}: {_baseline_setting(b, v)}")
    if summary["figures"]:
        lines += ["", "## Figures", ""]
        for f in summary["figures"]:
            lines += [
                f"### {f['patient_id']} ({body_part_name(f['body_part'])}), z = {f['z']:.1f} mm",
                "",
                f"![{f['patient_id']} comparison]({f['comparison']})",
                "",
                f"![{f['patient_id']} difference maps]({f['difference']})",
                "",
            ]
    t = summary["timing_s"]
    if lines[-1]:
        lines.append("")
    lines += [f"Wall time {t.get('total_s', float('nan')):.1f} s (model {t.get('model_s', float('nan')):.1f} s).", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# Figures and the console table
# --------------------------------------------------------------------------------------------------


def write_figures(out: Path, pairs: list, config, params: dict) -> list[dict]:
    from ldct_monai.figures import comparison_figure, difference_figure

    if not pairs:
        return []
    fig_dir = out / "figures"
    fig_dir.mkdir()
    figures = []
    for p in pairs:
        pid, z, bp = str(p.row["patient_id"]), float(p.row["z"]), p.body_part
        stem = f"{_safe(pid)}_z{z:.2f}"  # e.g. L067_z-123.50
        win = LDCTBENCH_WINDOWS[bp]
        title = f"{pid} ({body_part_name(bp)}), z = {z:.1f} mm"
        panels = {"low-dose": p.images[INPUT], "model": p.images[MODEL]}
        if REFERENCE in p.images:
            panels["reference"] = p.images[REFERENCE]
        for b in config.baselines:
            panels[METHOD_LABELS[b]] = p.images[b]
        panels["full-dose"] = p.images["full_dose"]
        comp = fig_dir / f"{stem}_compare.png"
        diff = fig_dir / f"{stem}_diff.png"
        comparison_figure(panels, comp, window=win, title=title, crop=config.crop)
        difference_figure(p.images[INPUT], p.images[MODEL], p.images["full_dose"], diff, title=title, crop=config.crop, denoised_label="model")
        figures.append(
            {
                "patient_id": pid,
                "body_part": bp.value,
                "z": z,
                "comparison": f"figures/{comp.name}",
                "difference": f"figures/{diff.name}",
            }
        )
        p.images = {}
    return figures


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "slice"


SHORT_LABELS = {INPUT: "low-dose", MODEL: "model", REFERENCE: "reference", "gaussian": "Gaussian", "nlm": "NLM", "bm3d": "BM3D"}


def summary_table(summary: dict, per_body_part: bool = False):
    """A short rich table (fits 80 columns): mean PSNR / SSIM per method and convention, gain vs input,
    and each method's seconds per slice.

    Args:
        summary: the dict :func:`evaluate` returns (or ``summary.json`` loaded).
        per_body_part: add a section per body part under the pooled one.
    """
    from rich import box
    from rich.table import Table

    table = Table(
        title=f"Paired test metrics: mean over {summary['n_slices']} slices (gain vs low-dose input)",
        caption="PSNR in dB; full = [-1024, 3071] HU; win = LDCTBench body-part window; s/slice = seconds per slice",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
    )
    table.add_column("method", no_wrap=True)
    for c in ("full", "win"):
        table.add_column(f"PSNR {c}", justify="right", no_wrap=True)
        table.add_column(f"SSIM {c}", justify="right", no_wrap=True)
    table.add_column("s/slice", justify="right", no_wrap=True)
    parts = [ALL] + ([bp for bp in summary["results"] if bp != ALL] if per_body_part else [])
    for bp in parts:
        if per_body_part:
            n = summary["results"][bp][INPUT]["n"]
            table.add_row(f"[bold]{body_part_name(bp)}[/]", f"n={n}")  # n outside the method column: fits 80
        for method in summary["methods"]:
            e = summary["results"][bp][method]
            cells = [SHORT_LABELS.get(method, method)]
            for c in CONVENTIONS:
                for m in ("psnr", "ssim"):
                    s = e[f"{m}_{c}"]
                    d = DIGITS[m] if m == "psnr" else 3
                    txt = _fmt(s["mean"], d)
                    if method != INPUT and s["gain_mean"] is not None:
                        g = s["gain_mean"]
                        colour = "green" if g > 0 else "red"
                        txt += f" [{colour}]{_fmt_gain(g, d)}[/]"
                    cells.append(txt)
            cells.append("" if method == INPUT else _fmt_seconds(e.get("seconds_per_slice")))
            table.add_row(*cells, end_section=method == summary["methods"][-1])
    return table


def print_summary(summary: dict, per_body_part: bool = False, console=None) -> None:
    """Print :func:`summary_table` to ``console`` (the package's stderr console by default)."""
    from ldct_monai.progress import console as default_console

    (console or default_console).print(summary_table(summary, per_body_part=per_body_part))
