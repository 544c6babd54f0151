"""train_config: declared help, the <= 30 flags of `train --help`, config-file-only fields, presets and recipes."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ldct_monai import train_config as tc
from ldct_monai.cli import app
from ldct_monai.errors import InputError
from ldct_monai.train_config import CLI_FIELDS, PRESETS, TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "ldct_monai" / "models" / "recipes"


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _help_options() -> list[str]:
    """The options `train --help` lists (first column of the options panel)."""
    r = CliRunner().invoke(app, ["train", "--help"])
    assert r.exit_code == 0, r.output
    return re.findall(r"^\W (--[a-z][a-z0-9-]*)", r.output, re.M)


def test_train_help_lists_at_most_30_options():
    listed = _help_options()
    options = [o for o in listed if o != "--help"]
    assert len(options) <= 30, options
    assert set(options) == {"--config", *map(_flag, CLI_FIELDS)}
    assert len(options) == len(set(options)) == len(CLI_FIELDS) + 1


def test_every_field_declares_its_help_next_to_it():
    for f in fields(TrainConfig):
        assert isinstance(f.metadata.get("help"), str) and len(f.metadata["help"]) > 5, f.name
        assert isinstance(f.metadata.get("cli"), bool), f.name
    helps = {p.opts[0]: p.help for p in typer.main.get_command(app).commands["train"].params}
    assert helps["--lr"] == "Adam learning rate (Zhu et al., MathWorks) [default: 0.0002, or the preset's]"
    assert helps["--model-select"].startswith(tc.field_help("model_select"))
    assert "--grad-clip" not in helps  # a config-file-only field has no option


def test_config_only_fields_are_set_from_a_file_and_refused_as_flags(tmp_path):
    changed = {"grad_clip": 1.0, "lambda_cycle": 1.0, "lambda_identity": 2.5, "supervised_loss": "l1+ssim",
               "g_norm": "none", "d_warmup_steps": 5, "compile": True, "channels_last": True, "cache": "disk",
               "cache_dir": str(tmp_path / "c"), "epochs": 4, "decay_epochs": 2, "log_every": 3, "keep_checkpoints": 2,
               "beta1": 0.9, "beta2": 0.99, "pool_size": 10, "upsample": "transpose", "residual": False,
               "init_identity": False, "d_layers": 2, "d_norm": "batch", "hu_low": -1000.0, "hu_high": 2000.0,
               "min_tissue_fraction": 0.25, "tissue_hu": -400.0, "patch_tries": 3, "lambda_identity_l1": 1.0,
               "lambda_fidelity_lf": 1.0, "fidelity_pool": 4, "lambda_adv_fd": 0.5, "ld2fd_warmup_steps": 3,
               "noise_lr": 1e-3, "noise_level": "image", "noise_source": "generator", "fd2ld": "resnet", "ema_decay": 0.9}  # fd2ld: noise would refuse the identity weights above
    assert set(changed) == {f.name for f in fields(TrainConfig)} - set(CLI_FIELDS)  # every field without a flag
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in changed.items()))
    cfg = TrainConfig.from_file(cfg_file, preset="cpu-small", lr=1e-3)
    assert {k: getattr(cfg, k) for k in changed} == changed and cfg.lr == 1e-3 and cfg.ngf == 16
    assert TrainConfig.from_preset("cpu-small", **changed).replace(seed=1).grad_clip == 1.0  # and from Python
    r = CliRunner().invoke(app, ["train", "--grad-clip", "1.0"])
    assert r.exit_code == 2 and "No such option" in r.output


def test_presets_recipes_and_saved_configs_load_unchanged(tmp_path):
    for name in PRESETS:
        assert TrainConfig.from_preset(name).preset == name
    v1 = TrainConfig.from_file(RECIPES / "ldct-denoiser-v1.yaml")
    assert (v1.preset, v1.method, v1.g_norm, v1.init_identity, v1.grad_clip, v1.beta1, v1.precision) == \
        ("cpu-small", "supervised", "none", False, 1.0, 0.9, "bf16")
    v2 = tmp_path / "v2.yaml"  # a recipe with the same fields plus channels_last
    v2.write_text((RECIPES / "ldct-denoiser-v1.yaml").read_text() + "channels_last: true\n")
    assert asdict(TrainConfig.from_file(v2)) == {**asdict(v1), "channels_last": True}
    for recipe in RECIPES.glob("*.yaml"):
        TrainConfig.from_file(recipe)
    # a run's config.json of the shipped model (written before some fields existed) still loads
    meta = json.loads((ROOT / "ldct_monai" / "models" / "ldct-denoiser-v1" / "configs" / "metadata.json").read_text())
    saved = meta["ldct_monai"]["config"]
    cfg = TrainConfig.from_dict(saved)
    assert all(getattr(cfg, k) == v for k, v in saved.items())


def test_problems_are_listed_together():
    with pytest.raises(InputError) as err:
        TrainConfig.from_preset("cpu-small", lr=0, cache="ram", fidelity_pool=0)
    text = str(err.value)
    assert "cache must be one of none, memory, disk" in text and "lr > 0" in text and "fidelity_pool must be >= 1" in text
    assert tc.field_help("grad_clip") == "clip gradient norm at this value, or disable if == 0.0"


def test_the_training_page_names_every_field_without_a_flag():
    text = (ROOT / "docs" / "training.md").read_text()
    section = text[text.index("## Configuration"):text.index("| preset | what | key values |")]
    missing = [f.name for f in fields(TrainConfig) if f.name not in CLI_FIELDS and f"`{f.name}`" not in section]
    assert not missing, missing
    assert all(_flag(name) in section for name in CLI_FIELDS)
