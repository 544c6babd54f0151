"""Check the noise insertion on real series: full-dose vs inserted NPS and std, as a table and a figure.

``python -m ldct_monai.synth.validate SERIES_DIR [SERIES_DIR ...] --out DIR [--fractions 0.25,0.1]
[--slices 24]`` simulates each series (a slab of ``--slices`` contiguous slices from its middle, copied
to a temporary folder) at each dose fraction, without electronic noise (the default) and with 2.5 photons, and
writes ``DIR/noise_check.csv``, ``DIR/noise_check.md`` and ``DIR/noise_nps.png``. The numbers in
``docs/simulator.md`` come from this command.
"""

from __future__ import annotations

import argparse
import logging
import math
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

COLUMNS = ("series", "kernel", "kernel_class", "iterative", "dose_fraction", "electronic_noise", "rois",
           "fd_std_hu", "target_std_hu", "inserted_std_hu", "std_error_pct", "fd_peak", "inserted_peak",
           "peak_error_pct", "fd_half_power", "inserted_half_power", "half_power_error_pct", "seconds_per_slice")


def _slab(series_dir: Path, n: int, tmp: Path) -> Path:
    from ldct_monai.dicom.reader import read_series

    series = read_series(series_dir, warn_skipped=False)
    start = max(0, (len(series) - n) // 2)
    dst = tmp / series_dir.name
    dst.mkdir()
    for ref in series.slices[start : start + n]:
        shutil.copy(ref.path, dst / ref.path.name)
    return dst


def validate(series_dirs: list[Path], out: Path, fractions: tuple[float, ...] = (0.25, 0.1), slices: int = 24,
             seed: int = 0) -> list[dict]:
    """Run the check (see the module docstring); returns the table rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ldct_monai.synth.from_series import simulate_low_dose_series

    out.mkdir(parents=True, exist_ok=True)
    rows, curves = [], {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for series_dir in series_dirs:
            slab = _slab(Path(series_dir), slices, tmp)
            for fraction in fractions:
                for electronic in (0.0, 2.5):
                    res = simulate_low_dose_series(slab, tmp / f"ld-{slab.name}-{fraction}-{electronic}",
                                                   dose_fraction=fraction, electronic_noise=electronic, seed=seed,
                                                   progress=False)
                    c = res["check"]

                    def err(a: float, b: float) -> float:
                        return round(100.0 * (a - b) / b, 1) if b and math.isfinite(b) else float("nan")

                    rows.append({
                        "series": slab.name, "kernel": res["kernel"], "kernel_class": res["kernel_class"],
                        "iterative": res["iterative"] or "", "dose_fraction": fraction,
                        "electronic_noise": "off (default)" if not electronic else f"{electronic:g}",
                        "rois": c["rois"], "fd_std_hu": round(c["fd_std_hu"], 1),
                        "target_std_hu": round(c["target_std_hu"], 1), "inserted_std_hu": round(c["inserted_std_hu"], 1),
                        "std_error_pct": err(c["inserted_std_hu"], c["target_std_hu"]),
                        "fd_peak": round(c["fd_peak"], 3), "inserted_peak": round(c["inserted_peak"], 3),
                        "peak_error_pct": err(c["inserted_peak"], c["fd_peak"]),
                        "fd_half_power": round(c["fd_half_power"], 3),
                        "inserted_half_power": round(c["inserted_half_power"], 3),
                        "half_power_error_pct": err(c["inserted_half_power"], c["fd_half_power"]),
                        "seconds_per_slice": round(res["seconds"] / res["files"], 2),
                    })
                    log.info("%s", rows[-1])
                    if not electronic and fraction == fractions[0]:
                        curves[slab.name] = (c["freq"], c["fd_nps"], c["inserted_nps"], res["kernel"])
                    shutil.rmtree(tmp / f"ld-{slab.name}-{fraction}-{electronic}")
    import csv

    with open(out / "noise_check.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
    (out / "noise_check.md").write_text(head + "".join("| " + " | ".join(str(r[k]) for k in COLUMNS) + " |\n" for r in rows))
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (name, (freq, fd, ins, kernel)) in zip(axes[0], curves.items()):
        ax.plot(freq, [v / max(fd) for v in fd], "k-o", ms=3, label="full-dose noise (measured)")
        ax.plot(freq, [v / max(ins) for v in ins], "r--s", ms=3, label=f"inserted, dose {fractions[0]:g}")
        ax.set_title(f"{name} (kernel {kernel or '-'})", fontsize=9)
        ax.set_xlabel("cycles / pixel")
        ax.set_ylim(0, 1.1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("NPS (normalised)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "noise_nps.png", dpi=110)
    plt.close(fig)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("series", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--fractions", default="0.25,0.1")
    parser.add_argument("--slices", type=int, default=24)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    validate(args.series, args.out, tuple(float(x) for x in args.fractions.split(",")), args.slices)


if __name__ == "__main__":
    main()
