"""The training engine: learning, exact resume, crash-safe checkpoints, NaN stop, safe loading, CLI, config."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from train_fixtures import TINY, make_manifest, one_thread  # noqa: F401 (fixture)
from typer.testing import CliRunner

from ldct_monai.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_latest,
    save_checkpoint,
)
from ldct_monai.cli import app
from ldct_monai.data import UnpairedBatches, split_records
from ldct_monai.engine import CycleGAN, train
from ldct_monai.errors import InputError, OutputExistsError, TrainingDiverged
from ldct_monai.modelio import load_model
from ldct_monai.train_config import PRESETS, TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("eng"), size=32, slices=4, seed=1)


def _cfg(manifest, out, **kw):
    return TrainConfig.from_preset("cpu-small", manifest=str(manifest), out=str(out), **{**TINY, **kw})


def _state(run_dir: Path) -> dict:
    return load_checkpoint(list_checkpoints(run_dir)[-1])


def test_a_few_steps_lower_the_cycle_loss(manifest):
    # A random (not identity) head, so the cycle loss starts far from 0 and has to be learned down.
    cfg = _cfg(manifest, "unused", init_identity=False, lambda_identity=0.0, seed=0)
    model = CycleGAN(cfg, torch.device("cpu"), total_steps=100, decay_steps=0)
    batches = UnpairedBatches(cfg, split_records(manifest, "train_ld", "ld", "low"),
                              split_records(manifest, "train_fd", "fd", "full"))
    ld0, fd0 = next(iter(batches.epoch(0)))[:2]

    def cycle() -> float:
        with torch.no_grad():
            out = model.gens(ld0, fd0, identity=False)
            return float((out["rec_ld"] - ld0).abs().mean() + (out["rec_fd"] - fd0).abs().mean())

    before = cycle()
    for epoch in range(5):
        for batch in batches.epoch(epoch):
            losses = model.train_step(*batch)
    after = cycle()
    print(f"cycle L1 on a fixed batch: {before:.4f} -> {after:.4f} after 20 steps")
    assert torch.isfinite(losses).all()
    assert after < 0.65 * before, (before, after)  # measured 0.87 -> 0.43


def test_resume_equals_uninterrupted_run(manifest, tmp_path):
    full = train(_cfg(manifest, tmp_path / "full", max_steps=7))
    half = train(_cfg(manifest, tmp_path / "half", max_steps=3))
    assert [p.name for p in list_checkpoints(half)] == ["step_00000003.pt"]
    resumed = train(_cfg(manifest, tmp_path / "half", max_steps=7, resume=True))
    a, b = _state(full), _state(resumed)
    assert a["step"] == b["step"] == 7
    for part in ("gens", "discs"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs after resume"
    assert a["opt_g"]["param_groups"][0]["lr"] == b["opt_g"]["param_groups"][0]["lr"]
    assert torch.equal(a["pool_fd"]["images"], b["pool_fd"]["images"])
    # the metrics of steps 4..7 are the same numbers, and no row is duplicated
    rows_a = (full / "metrics.csv").read_text().splitlines()
    rows_b = (resumed / "metrics.csv").read_text().splitlines()
    assert rows_a[0] == rows_b[0] and len(rows_a) == len(rows_b) == 8
    col = rows_a[0].split(",").index("loss_g")
    assert [r.split(",")[col] for r in rows_a[1:]] == [r.split(",")[col] for r in rows_b[1:]]
    # exported model is the LD->FD generator of the run, with its card
    m = load_model(resumed)
    assert m.card["step"] == 7 and m.card["config"]["ngf"] == 4 and m.card["manifest_hash"]
    assert torch.equal(m.generator.state_dict()["head.1.weight"], a["gens"]["ld2fd.head.1.weight"])
    info = json.loads((full / "run.json").read_text())
    assert info["world_size"] == 1 and info["steps"] == 7 and info["schedule_steps"] == 20
    # keep-last-K: checkpoint_every 3 and at the end, with epochs of 4 steps -> 3, 4, 6, 7; keep 3
    assert [p.name for p in list_checkpoints(full)] == ["step_00000004.pt", "step_00000006.pt", "step_00000007.pt"]
    assert (full / "loss_curves.png").is_file() and list((full / "previews").glob("*.png"))


def test_resume_refuses_changes_that_alter_training(manifest, tmp_path):
    run = train(_cfg(manifest, tmp_path / "r", max_steps=1))
    with pytest.raises(InputError, match=r"cannot change fields that alter training \(lr: 0.0002 -> 0.001"):
        train(_cfg(manifest, run, max_steps=2, resume=True, lr=1e-3))
    with pytest.raises(OutputExistsError, match="--resume"):
        train(_cfg(manifest, run, max_steps=2))
    with pytest.raises(InputError, match="nothing to resume"):
        train(_cfg(manifest, tmp_path / "new", resume=True))


_KILLER = textwrap.dedent("""
    import os, signal, sys, torch
    from ldct_monai.checkpoint import save_checkpoint
    run = sys.argv[1]
    save_checkpoint(run, 1, {"w": torch.ones(3)})
    real_fsync = os.fsync
    def die(fd):  # the new checkpoint's bytes are written but not yet renamed into place
        os.kill(os.getpid(), signal.SIGKILL)
    os.fsync = die
    save_checkpoint(run, 2, {"w": torch.full((1000,), 2.0)})
""")


def test_kill_during_checkpoint_write_leaves_previous_loadable(tmp_path):
    proc = subprocess.run([sys.executable, "-c", _KILLER, str(tmp_path)], capture_output=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    leftovers = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert "step_00000001.pt" in leftovers and "step_00000002.pt" not in leftovers
    assert any(n.startswith(".step_00000002.pt.tmp") for n in leftovers)  # the half-done write, ignored
    path, state = load_latest(tmp_path)
    assert path.name == "step_00000001.pt" and torch.equal(state["w"], torch.ones(3))


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
def test_malicious_pickle_in_checkpoint_is_refused(tmp_path):
    save_checkpoint(tmp_path, 1, {"w": torch.ones(2)})
    marker = tmp_path / "pwned"
    evil = tmp_path / "checkpoints" / "step_00000005.pt"
    torch.save({"format": 1, "step": 5, "payload": _Evil(marker)}, evil)  # a pickle that would run code
    with pytest.raises(InputError, match="cannot load checkpoint safely"):
        load_checkpoint(evil)
    path, _ = load_latest(tmp_path)  # the newest one is refused; resume falls back to the good one
    assert path.name == "step_00000001.pt" and not marker.exists()
    (tmp_path / "checkpoints" / "step_00000001.pt").write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(InputError, match="no checkpoint loads"):
        load_latest(tmp_path)
    assert not marker.exists()


def test_non_finite_loss_stops_with_a_clear_error(manifest, tmp_path, monkeypatch):
    real_step = CycleGAN.train_step
    calls = {"n": 0}

    def poisoned(self, *batch):
        calls["n"] += 1
        out = real_step(self, *batch)
        if calls["n"] == 2:
            out[5] = float("nan")  # loss_d
        return out

    monkeypatch.setattr(CycleGAN, "train_step", poisoned)
    with pytest.raises(TrainingDiverged, match=r"step 2: non-finite loss \(loss_d=nan\)"):
        train(_cfg(manifest, tmp_path / "nan", max_steps=5, checkpoint_every=1))
    assert [p.name for p in list_checkpoints(tmp_path / "nan")] == ["step_00000001.pt"]  # nothing after the NaN


def test_cli_train_config_file_and_errors(manifest, tmp_path):
    runner = CliRunner()
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("preset: cpu-small\n" + "".join(f"{k}: {v}\n" for k, v in TINY.items()) + "max_steps: 2\n")
    out = tmp_path / "run"
    res = runner.invoke(app, ["train", "--manifest", str(manifest), "--out", str(out), "--config", str(cfg_file),
                              "--seed", "5", "--no-tensorboard"])
    assert res.exit_code == 0, res.output
    saved = json.loads((out / "config.json").read_text())
    assert saved["seed"] == 5 and saved["max_steps"] == 2 and saved["ngf"] == 4 and saved["preset"] == "cpu-small"
    assert load_model(out).card["step"] == 2
    res = runner.invoke(app, ["train", "--manifest", str(manifest), "--out", str(out), "--resume", "--max-steps", "3"])
    assert res.exit_code == 0, res.output
    assert load_model(out).card["step"] == 3
    res = runner.invoke(app, ["train", "--out", str(out), "--resume"])  # no --max-steps: to the schedule's end
    assert res.exit_code == 0, res.output
    assert load_model(out).card["step"] == TINY["total_steps"]
    res = runner.invoke(app, ["train", "--manifest", str(manifest), "--out", str(out), "--config", str(cfg_file)])
    assert res.exit_code == 1 and "exists and is not empty" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"ngf": "many", "bogus": 1}))
    res = runner.invoke(app, ["train", "--manifest", str(manifest), "--out", str(tmp_path / "x"), "--config", str(bad)])
    assert res.exit_code == 1 and "unknown field(s) bogus" in res.output and "ngf must be an integer" in res.output
    res = runner.invoke(app, ["train", "--manifest", str(tmp_path / "nope"), "--out", str(tmp_path / "y")])
    assert res.exit_code == 1 and "manifest file missing" in res.output and not (tmp_path / "y").exists()


def test_config_presets_and_validation():
    m = TrainConfig.from_preset("matlab", manifest="m", out="o")
    assert (m.patch_size, m.patches_per_slice, m.batch_size, m.ngf, m.n_blocks) == (128, 16, 32, 64, 6)
    assert (m.lr, m.beta1, m.beta2, m.lambda_cycle, m.pool_size) == (2e-4, 0.5, 0.999, 10.0, 50)
    assert m.slices_per_batch == 2 and set(PRESETS) >= {"matlab", "cpu-small"}
    with pytest.raises(InputError, match="unknown preset"):
        TrainConfig.from_preset("huge")
    with pytest.raises(InputError, match="patch_size must be a multiple of 4.*batch_size .* multiple of patches_per_slice"):
        TrainConfig(batch_size=10, patches_per_slice=4, patch_size=30)
    with pytest.raises(AttributeError):
        m.lr = 1.0  # frozen
    assert m.replace(seed=9).seed == 9 and m.seed == 0


@pytest.mark.parametrize("native", [False, True])
def test_bf16_training_warns_where_the_cpu_emulates_it(tmp_path, one_thread, caplog, monkeypatch, native):
    """--precision bf16 without AVX-512-BF16/AMX runs, but slower than fp32: the run says so (and only then)."""
    import ldct_monai.engine as engine

    monkeypatch.setattr(engine, "native_bf16", lambda device="auto": native)
    man = make_manifest(tmp_path, size=48, slices=2)
    cfg = TrainConfig.from_dict({**TINY, "manifest": str(man), "out": str(tmp_path / "run"), "precision": "bf16",
                                 "total_steps": 1})
    with caplog.at_level("WARNING"):
        train(cfg)
    assert ("without native bf16" in caplog.text) is not native
