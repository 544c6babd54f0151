"""Paired manifests (build-manifest --paired), supervised training in the same engine, --init-generator."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from train_fixtures import TINY, one_thread  # noqa: F401 (fixture)
from typer.testing import CliRunner

from ldct_monai.checkpoint import list_checkpoints, load_checkpoint
from ldct_monai.cli import app
from ldct_monai.data import PairedBatches, pair_records
from ldct_monai.engine import Supervised, init_generator_state, train
from ldct_monai.errors import InputError
from ldct_monai.modelio import load_model
from ldct_monai.synth import SynthConfig, synth_tree
from ldct_monai.train_config import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def paired_manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("sup")
    synth_tree(root / "tree", SynthConfig(patients=6, slices=3, size=48, seed=3, body_parts=("L",)), progress=False)
    res = CliRunner().invoke(app, ["build-manifest", str(root / "tree"), "--out", str(root / "man"), "--paired",
                                   "--ratios", "0.5,0.3,0.2"])
    assert res.exit_code == 0, res.output
    return root / "man"


def _cfg(manifest, out, **kw):
    return TrainConfig.from_preset("cpu-small", manifest=str(manifest), out=str(out), method="supervised",
                                   body_part_batches=False, **{**TINY, **kw})


def test_paired_manifest_pairs_train_and_val_patients(paired_manifest, tmp_path):
    train_pairs = pd.read_csv(paired_manifest / "train_pairs.csv", dtype={"patient_id": str})
    val_pairs = pd.read_csv(paired_manifest / "val_pairs.csv", dtype={"patient_id": str})
    test_pairs = pd.read_csv(paired_manifest / "test_pairs.csv", dtype={"patient_id": str})
    assert len(train_pairs) and len(val_pairs) and len(test_pairs)
    for df in (train_pairs, val_pairs):
        assert ((df["ld_z"] - df["fd_z"]).abs() < 0.1).all()
        assert df["ld_path"].str.contains("Low Dose").all() and df["fd_path"].str.contains("Full Dose").all()
    groups = [set(df["patient_id"]) for df in (train_pairs, val_pairs, test_pairs)]
    assert not (groups[0] & groups[1]) and not (groups[0] & groups[2]) and not (groups[1] & groups[2])
    # the unpaired splits are as without --paired
    assert set(pd.read_csv(paired_manifest / "train_ld.csv", dtype={"patient_id": str})["patient_id"]) <= groups[0]
    # without --paired there are no pair files, and supervised training says how to make them
    plain = tmp_path / "plain"
    data_root = pd.read_json(paired_manifest / "splits.json", typ="series")["data_root"]
    assert CliRunner().invoke(app, ["build-manifest", str(data_root), "--out", str(plain)]).exit_code == 0
    assert not (plain / "train_pairs.csv").exists()
    with pytest.raises(InputError, match="--paired"):
        pair_records(plain, "train_pairs")
    res = CliRunner().invoke(app, ["train", "--manifest", str(plain), "--out", str(tmp_path / "r"), "--method",
                                   "supervised", "--max-steps", "1"])
    assert res.exit_code == 1 and "--paired" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "r").exists()


def test_paired_patches_are_the_same_place(paired_manifest):
    cfg = _cfg(paired_manifest, "unused")
    batch = next(iter(PairedBatches(cfg, pair_records(paired_manifest, "train_pairs")).epoch(0)))
    # same crop, rotation and flip: LD - FD is noise only (small against the anatomy's range)
    diff = (batch.ld - batch.fd).abs().mean()
    assert diff < 0.1 * (batch.fd - batch.fd.mean()).abs().mean() + 0.02
    assert torch.equal(batch.ld_body_part, batch.fd_body_part)


def test_supervised_steps_lower_the_loss(paired_manifest):
    cfg = _cfg(paired_manifest, "unused", init_identity=False, lr=1e-3, beta1=0.9)
    model = Supervised(cfg, torch.device("cpu"), total_steps=100, decay_steps=0)
    batches = PairedBatches(cfg, pair_records(paired_manifest, "train_pairs"))
    fixed = next(iter(batches.epoch(0)))

    def l1() -> float:
        with torch.no_grad():
            return float((model.gen(fixed.ld) - fixed.fd).abs().mean())

    before = l1()
    for epoch in range(8):
        for batch in batches.epoch(epoch):
            losses = model.train_step(*batch)
    assert torch.isfinite(losses).all()
    assert l1() < 0.5 * before, (before, l1())


def test_supervised_resume_equals_uninterrupted_and_exports(paired_manifest, tmp_path):
    full = train(_cfg(paired_manifest, tmp_path / "full", max_steps=5, val_every=2))
    train(_cfg(paired_manifest, tmp_path / "half", max_steps=3, checkpoint_every=3, val_every=2))
    resumed = train(_cfg(paired_manifest, tmp_path / "half", max_steps=5, resume=True, val_every=2))
    a = load_checkpoint(list_checkpoints(full)[-1])
    b = load_checkpoint(list_checkpoints(resumed)[-1])
    assert a["step"] == b["step"] == 5
    for k in a["gen"]:
        assert torch.equal(a["gen"][k], b["gen"][k]), k
    m = load_model(full)
    assert m.name == "ldct-monai-supervised" and "supervised" in m.card["task"]
    assert m.card["config"]["method"] == "supervised"
    val = (full / "val_metrics.csv").read_text()
    assert "psnr_g_ld" in val and (full / "loss_curves.png").is_file()


def test_init_generator_starts_from_a_trained_model(paired_manifest, tmp_path):
    src = train(_cfg(paired_manifest, tmp_path / "src", max_steps=3))
    state, what = init_generator_state(str(src), _cfg(paired_manifest, "unused"))
    trained = load_model(src).generator.state_dict()
    assert all(torch.equal(state[k], trained[k]) for k in trained) and "ldct-monai-supervised" in what
    # a CycleGAN run from it: G starts as the source generator, the card says so
    run = train(TrainConfig.from_preset("cpu-small", manifest=str(paired_manifest), out=str(tmp_path / "cg"),
                                        init_generator=str(src), lr=1e-12, **{**TINY, "max_steps": 1}))
    card = load_model(run).card
    assert card["initialised_from"].startswith("ldct-monai-supervised")
    out = load_model(run).generator.state_dict()
    assert max(float((out[k] - trained[k]).abs().max()) for k in trained) < 1e-6  # lr ~0: still the source
    with pytest.raises(InputError, match="ngf"):
        init_generator_state(str(src), _cfg(paired_manifest, "unused", ngf=8))


def test_preset_flag_beats_the_preset_of_a_config_file(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("preset: matlab\nseed: 3\n")
    cfg = TrainConfig.from_file(cfg_file, preset="cpu-small")
    assert cfg.preset == "cpu-small" and cfg.ngf == 16 and cfg.seed == 3
    assert TrainConfig.from_file(cfg_file).preset == "matlab"


def test_generator_without_norm_is_fully_convolutional():
    """norm="none": a patch of a slice gives the same output as that region of the whole slice (no image statistics)."""
    from ldct_monai.networks import ResNetGenerator

    torch.manual_seed(0)
    g = ResNetGenerator(ngf=4, n_blocks=1, norm="none").eval()
    x = torch.rand(1, 1, 128, 128) * 2 - 1  # the centre lies 40 px (> the receptive-field radius) from the crop's edge
    with torch.no_grad():
        whole, part = g(x)[..., 48:80, 48:80], g(x[..., 8:120, 8:120])[..., 40:72, 40:72]
    assert torch.allclose(whole, part, atol=1e-5)
    g_in = ResNetGenerator(ngf=4, n_blocks=1).eval()
    with torch.no_grad():
        assert not torch.allclose(g_in(x)[..., 48:80, 48:80], g_in(x[..., 8:120, 8:120])[..., 40:72, 40:72], atol=1e-4)


def test_cyclegan_warm_up_trains_only_the_discriminators(paired_manifest):
    from ldct_monai.data import UnpairedBatches, split_records
    from ldct_monai.engine import CycleGAN

    cfg = TrainConfig.from_preset("cpu-small", manifest=str(paired_manifest), out="unused", d_warmup_steps=2, lr=1e-2,
                                  **TINY)
    model = CycleGAN(cfg, torch.device("cpu"), total_steps=20, decay_steps=0)
    batches = UnpairedBatches(cfg, split_records(paired_manifest, "train_ld", "ld", "low"),
                              split_records(paired_manifest, "train_fd", "fd", "full"))
    batch = next(iter(batches.epoch(0)))
    snap = lambda m: {k: v.clone() for k, v in m.state_dict().items()}  # noqa: E731
    g0, d0 = snap(model.gens), snap(model.discs)
    for _ in range(2):
        assert torch.isfinite(model.train_step(*batch)).all()
    assert all(torch.equal(g0[k], v) for k, v in model.gens.state_dict().items())  # warm-up: G untouched
    assert any(not torch.equal(d0[k], v) for k, v in model.discs.state_dict().items())  # ... while D learnt
    model.train_step(*batch)
    assert any(not torch.equal(g0[k], v) for k, v in model.gens.state_dict().items())  # then G trains too


def test_cyclegan_scored_on_val_twins_exports_the_best_val_pairs_step(paired_manifest, tmp_path):
    """With val twins in the manifest the CycleGAN is scored on them (gain_db), and model_select val-pairs
    exports the best scored step (step 0, the starting generator, takes part)."""
    src = train(_cfg(paired_manifest, tmp_path / "src", max_steps=3))
    kw = {**TINY, "max_steps": 4, "val_every": 2, "checkpoint_every": 2}
    run = train(TrainConfig.from_preset("cpu-small", manifest=str(paired_manifest), out=str(tmp_path / "cg"),
                                        init_generator=str(src), model_select="val-pairs", lr=1e-2, **kw))
    val = pd.read_csv(run / "val_metrics.csv")
    assert {"gain_db", "noise_g_ld"} <= set(val.columns) and list(val["step"]) == [0, 2, 4]
    card = load_model(run).card
    best = int(val.loc[val["gain_db"].idxmax(), "step"])
    assert card["selection"]["by"] == "val-pairs" and card["selection"]["step"] == best
    assert card["selection"]["gain_db"] == pytest.approx(val["gain_db"].max(), abs=1e-4)
    if best == 0:  # the exported generator is the start
        start = load_model(src).generator.state_dict()
        assert all(torch.equal(v, start[k]) for k, v in load_model(run).generator.state_dict().items())


@pytest.mark.parametrize("preset", ["cpu-adapt", "cpu-finetune"])
def test_adaptation_presets_fit_the_shipped_model(preset):
    """Both adaptation presets start from the shipped default: its architecture and HU window match theirs."""
    cfg = TrainConfig.from_preset(preset, manifest="m", out="o")
    state, what = init_generator_state(cfg.init_generator, cfg)
    assert cfg.init_generator == "builtin" and state and "ldct-denoiser" in what
    assert cfg.model_select == "val-pairs"
