"""docs/results/test_psnr_vs_steps.png from the ck_curve.csv files written by ckeval.py.

Usage: PYTHONPATH=. python docs/results/scripts/curve.py   (runs in /tmp/q/r_* and /tmp/x/r_*, as in docs/results.md)
"""
from pathlib import Path

import numpy as np
import pandas as pd

from ldct_monai.figures import curve_figure

xs = list(range(50, 501, 50))
series = {}
for r, label in [("r_base", "fp32 400 (old preset)"), ("r_bf16", "bf16 600"), ("r_cyc2", "bf16, cycle 2 + identity L1 10"),
                 ("r_lr1e3", "bf16, cycle 2 + id. L1 10, lr 1e-3")]:
    c = pd.read_csv(f"/tmp/q/{r}/ck_curve.csv").set_index("step")
    g = c.all_model_psnr_full - c.all_input_psnr_full
    series[label] = [max(float(g[s]), -3.0) if s in g.index else np.nan for s in xs]  # clip the step-50 collapse
curve_figure(xs, series, Path("docs/results/test_psnr_vs_steps.png"), ylabel="test PSNR - LD PSNR, full range (dB)",
             title="demo data, cpu-small checkpoints (clipped at -3 dB)")

# After the discriminators learned to see body parts (docs/training.md, "Several body parts"): runs in /tmp/x.
xs2 = list(range(150, 401, 50))
for conv, fname, ylabel in (("full", "test_psnr_vs_steps_body_parts.png", "test PSNR - LD PSNR, full range (dB)"),
                            ("ldctbench", "test_psnr_vs_steps_body_parts_window.png", "test PSNR - LD PSNR, LDCTBench window (dB)")):
    series = {}
    for r, label in [("r_win", "cpu-small now: window + body-part planes + body-part batches"),
                     ("r_win_nob", "window + body-part planes, mixed batches"),
                     ("r_win_s1", "cpu-small now, seed 1")]:
        path = Path(f"/tmp/x/{r}/ck_curve.csv")
        if not path.exists():
            continue
        c = pd.read_csv(path).set_index("step")
        g = c[f"all_model_psnr_{conv}"] - c[f"all_input_psnr_{conv}"]
        series[label] = [float(g[s]) if s in g.index else np.nan for s in xs2]
    curve_figure(xs2, series, Path("docs/results") / fname, ylabel=ylabel,
                 title="demo data (18 test slices), cpu-small checkpoints")

# The longer CPU run (docs/results.md section 6): /tmp/long/curve512.csv written by docs/results/scripts/watch512.py.
long_csv = Path("/tmp/long/curve512.csv")
if long_csv.exists():
    c = pd.read_csv(long_csv).sort_values("step")
    series = {f"{name}, {conv}": c[f"{bp}_psnr_{conv}_gain"].tolist()
              for bp, name in (("all", "all 27"), ("N", "head 9"))
              for conv in ("full", "ldctbench")}
    curve_figure(c["step"].tolist(), series, Path("docs/results/test_psnr_vs_steps_long.png"),
                 ylabel="test PSNR - LD PSNR (dB)", title="cpu-small, 5000 bf16 steps (43.6 min): 512 px set")
