"""Evaluate the kept checkpoints of a run on the paired test split (model only): test PSNR vs step.

Usage: PYTHONPATH=. python docs/results/scripts/ckeval.py RUN_DIR MANIFEST [last]   -> RUN_DIR/ck_curve.csv
"""
import json, sys, csv
from pathlib import Path
import torch
from ldct_monai.checkpoint import list_checkpoints, load_checkpoint
from ldct_monai.train_config import TrainConfig
from ldct_monai.networks import ResNetGenerator
from ldct_monai.modelio import export_model
from ldct_monai.evaluate import EvalConfig, evaluate

run = Path(sys.argv[1]); manifest = Path(sys.argv[2]); only_last = len(sys.argv) > 3 and sys.argv[3] == "last"
torch.set_num_threads(1)
cfg = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
rows = []
cks = list_checkpoints(run)
cks = [c for c in cks if int(c.stem.split("_")[1]) % 50 == 0] or cks[-1:]
if only_last: cks = cks[-1:]
val = {}
vm = run / "val_metrics.csv"
if vm.exists():
    for r in csv.DictReader(open(vm)):
        val[int(float(r["step"]))] = float(r.get("noise_g_ld") or r.get("val/noise_g_ld") or "nan")
for ck in cks:
    st = load_checkpoint(ck)
    step = int(st["step"])
    g = ResNetGenerator(**cfg.generator_kwargs)
    g.load_state_dict({k[len("ld2fd."):]: v for k, v in st["gens"].items() if k.startswith("ld2fd.")})
    mdir = run / "ck_models" / f"step_{step:06d}"
    export_model(mdir, g, cfg.generator_kwargs, hu_window=cfg.hu_window, config=cfg.asdict(), step=step)
    s = evaluate(manifest, mdir, run / "ck_eval" / f"step_{step:06d}", EvalConfig(baselines=(), n_figures=0, device="cpu"), overwrite=True, progress=False)
    import pandas as pd
    df = pd.read_csv(run / "ck_eval" / f"step_{step:06d}" / "summary.csv")
    rec = {"step": step, "val_noise_g_ld": val.get(step)}
    for bp in ("all", "C", "L", "N"):
        for m in ("low_dose", "model"):
            r = df[(df.body_part == bp) & (df.method == m)]
            if r.empty: continue
            r = r.iloc[0]
            for c in ("psnr_full", "psnr_ldctbench", "ssim_full", "ssim_ldctbench", "rmse_full"):
                rec[f"{bp}_{m.replace('low_dose','input')}_{c}"] = float(r[f"{c}_mean"])
    rows.append(rec)
    a = rec
    print(f"step {step:5d} valnoise {a['val_noise_g_ld']}  PSNR full {a['all_input_psnr_full']:.2f}->{a['all_model_psnr_full']:.2f}  "
          f"ldctb {a['all_input_psnr_ldctbench']:.2f}->{a['all_model_psnr_ldctbench']:.2f}  SSIM full {a['all_input_ssim_full']:.4f}->{a['all_model_ssim_full']:.4f} "
          f"ldctb {a['all_input_ssim_ldctbench']:.4f}->{a['all_model_ssim_ldctbench']:.4f} | C {a.get('C_model_psnr_full',0)-a.get('C_input_psnr_full',0):+.2f} L {a.get('L_model_psnr_full',0)-a.get('L_input_psnr_full',0):+.2f} N {a.get('N_model_psnr_full',0)-a.get('N_input_psnr_full',0):+.2f}", flush=True)
import pandas as pd
pd.DataFrame(rows).to_csv(run / "ck_curve.csv", index=False)
