"""Inference modes vs full-slice fp32 on the test LD slices: HU differences of the outputs, and time.

Usage: PYTHONPATH=. python docs/results/scripts/modes.py MODEL MANIFEST [THREADS]
"""
import sys, time
from pathlib import Path
import numpy as np, torch
from ldct_monai.inference import Denoiser
from ldct_monai.manifest import load_split
from ldct_monai.dicom.core import read_hu
torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
model, man = Path(sys.argv[1]), Path(sys.argv[2])
pairs = load_split(man, "test_pairs")
ld = np.stack([read_hu(p) for p in pairs["ld_path"]]).astype(np.float32)
ref_d = Denoiser.from_path(model, device="cpu", precision="fp32")
t = time.perf_counter(); ref = ref_d(ld); t_ref = time.perf_counter() - t
print(f"{len(ld)} slices {ld.shape[1]}x{ld.shape[2]}; full-slice fp32 {t_ref:.2f} s; mean |model - input| {np.abs(ref - ld).mean():.2f} HU")
print("mode | mean abs diff HU | p99 abs diff HU | max abs diff HU | time vs full fp32")
for name, kw in [("tile 64", dict(tile=64)), ("tile 128", dict(tile=128)), ("bf16 full", dict(precision="bf16")), ("bf16 tile 128", dict(precision="bf16", tile=128))]:
    d = Denoiser.from_path(model, device="cpu", **{"precision": "fp32", **kw})
    t = time.perf_counter(); out = d(ld); dt = time.perf_counter() - t
    diff = np.abs(out - ref)
    print(f"{name} | {diff.mean():.3f} | {np.percentile(diff, 99):.2f} | {diff.max():.1f} | {dt / t_ref:.2f}x")
