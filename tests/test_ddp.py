"""DDP: two CPU processes (gloo) launched by torchrun train one model; the replicas stay identical."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from train_fixtures import make_manifest

from ldct_monai.checkpoint import list_checkpoints, load_checkpoint
from ldct_monai.modelio import load_model

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="torch.distributed with the gloo backend is not available")


def test_torchrun_two_gloo_processes_keep_replicas_identical(tmp_path):
    manifest = make_manifest(tmp_path, size=32, slices=4, seed=2)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "ldct_monai.cli", "train", "--manifest", str(manifest), "--out", str(out), "--preset", "cpu-small",
           "--patch-size", "24", "--patches-per-slice", "2", "--batch-size", "2", "--ngf", "4", "--n-blocks", "1",
           "--ndf", "4", "--max-steps", "3", "--total-steps", "10", "--checkpoint-every", "2", "--val-every", "100",
           "--val-slices", "1", "--threads", "1", "--device", "cpu", "--no-tensorboard"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2 and info["steps"] == 3
    # 8 train slices per dose, 1 slice per step per rank: each rank sees 4 slices per epoch -> 4 steps/epoch
    assert info["steps_per_epoch"] == 4
    checksums = info["replica_checksums"]
    assert len(checksums) == 2 and checksums[0] == checksums[1] and info["replicas_identical"]
    # rank 0 alone wrote the checkpoints, holding both ranks' RNG states for an exact resume
    state = load_checkpoint(list_checkpoints(out)[-1])
    assert state["step"] == 3 and len(state["rng"]) == 2
    assert not torch.equal(state["rng"][0]["torch"], torch.empty(0))
    assert load_model(out).card["step"] == 3


def test_torchrun_fine_tunes_from_the_shipped_model_with_its_residual_noise_and_an_average(tmp_path):
    """The cpu-finetune preset (noise_source: ld-residual, G0 frozen) with ema_decay under two gloo processes:
    the replicas stay identical, G0 stays the shipped model, and the export is the average of the checkpoint."""
    from ldct_monai.models import builtin_model_dir

    manifest = make_manifest(tmp_path, size=32, slices=4, seed=2)
    out = tmp_path / "run"
    config = tmp_path / "site.yaml"
    config.write_text("preset: cpu-finetune\nema_decay: 0.9\nd_warmup_steps: 1\nld2fd_warmup_steps: 1\n"
                      "model_select: last\npatches_per_slice: 2\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "ldct_monai.cli", "train", "--config", str(config), "--manifest", str(manifest), "--out", str(out),
           "--patch-size", "24", "--batch-size", "2", "--max-steps", "3", "--total-steps", "10",
           "--checkpoint-every", "3", "--val-every", "100", "--val-slices", "1", "--threads", "1", "--device", "cpu",
           "--no-tensorboard"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    info = json.loads((out / "run.json").read_text())
    assert info["world_size"] == 2 and info["steps"] == 3 and info["replicas_identical"]
    state = load_checkpoint(list_checkpoints(out)[-1])
    shipped = load_model(builtin_model_dir()).generator.state_dict()
    start = {k.removeprefix("start."): v for k, v in state["gens"].items() if k.startswith("start.")}
    assert all(torch.equal(shipped[k], start[k]) for k in shipped)  # G0 is frozen
    exported = load_model(out).generator.state_dict()
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    live = {k.removeprefix("ld2fd."): v for k, v in state["gens"].items() if k.startswith("ld2fd.")}
    assert all(torch.equal(exported[k], ema[k]) for k in exported)
    assert any(not torch.equal(exported[k], live[k]) for k in exported)  # G learnt after its 1-step warm-up
