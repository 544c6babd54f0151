"""Export and evaluate (model only) every checkpoint at a multiple of 250 steps of a running training, before
--keep-checkpoints prunes it; appends to RUN/../curve512.csv.

Usage: PYTHONPATH=. python docs/results/scripts/watch512.py RUN_DIR MANIFEST TOTAL_STEPS
"""
import csv, json, time, sys
from pathlib import Path
import torch
from ldct_monai.checkpoint import load_checkpoint
from ldct_monai.evaluate import EvalConfig, evaluate
from ldct_monai.modelio import export_model
from ldct_monai.networks import ResNetGenerator
from ldct_monai.train_config import TrainConfig
import pandas as pd

torch.set_num_threads(1)
run, man, total = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
out_csv = run.parent / "curve512.csv"
done = set()
if out_csv.exists():
    done = {int(r["step"]) for r in csv.DictReader(open(out_csv))}
while True:
    cks = sorted(run.glob("checkpoints/step_*.pt"))
    todo = [c for c in cks if int(c.stem.split("_")[1]) % 250 == 0 and int(c.stem.split("_")[1]) not in done]
    for ck in todo:
        step = int(ck.stem.split("_")[1])
        try:
            st = load_checkpoint(ck)
        except Exception:
            continue
        g = ResNetGenerator(**cfg.generator_kwargs)
        g.load_state_dict({k[len("ld2fd."):]: v for k, v in st["gens"].items() if k.startswith("ld2fd.")})
        mdir = run.parent / "ck_models" / f"step_{step:06d}"
        export_model(mdir, g, cfg.generator_kwargs, hu_window=cfg.hu_window, config=cfg.asdict(), step=step)
        rdir = run.parent / "ck_eval512" / f"step_{step:06d}"
        evaluate(man, mdir, rdir, EvalConfig(baselines=(), n_figures=0, device="cpu"), overwrite=True, progress=False)
        df = pd.read_csv(rdir / "summary.csv")
        rec = {"step": step}
        for bp in ("all", "C", "L", "N"):
            r = df[(df.body_part == bp) & (df.method == "model")].iloc[0]
            for c in ("psnr_full", "psnr_ldctbench", "ssim_full", "ssim_ldctbench"):
                rec[f"{bp}_{c}_gain"] = float(r[f"{c}_gain_mean"])
        new = not out_csv.exists()
        with open(out_csv, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rec))
            if new:
                w.writeheader()
            w.writerow(rec)
        done.add(step)
        print(step, f"{rec['all_psnr_full_gain']:+.2f} {rec['all_psnr_ldctbench_gain']:+.2f} {rec['all_ssim_full_gain']:+.4f} {rec['all_ssim_ldctbench_gain']:+.4f}",
              " ".join(f"{bp} {rec[f'{bp}_psnr_full_gain']:+.2f}" for bp in "CLN"), flush=True)
    if total in done:
        break
    time.sleep(20)
