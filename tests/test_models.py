"""The shipped denoiser: found by default, loads safely, runs through denoise, says which model ran."""

from __future__ import annotations

import json

import pydicom
from typer.testing import CliRunner

from ldct_monai.cli import app
from ldct_monai.modelio import load_model
from ldct_monai.models import BUILTIN, builtin_model_dir, resolve_model, shipped_models


def test_builtin_is_shipped_with_card_and_recipe():
    assert BUILTIN in shipped_models()
    path = builtin_model_dir()
    card = json.loads((path / "model.json").read_text())
    assert card["config"]["method"] == "supervised" and card["architecture"]["kwargs"]["norm"] == "none"
    for key in ("training_data", "quality", "task"):
        assert card[key], key
    assert (path / "README.md").is_file() and (path / "generator.pt").stat().st_size < 20 * 2**20
    assert (path.parent / "recipes" / "ldct-denoiser-v1.yaml").is_file()
    m = load_model(resolve_model(None))  # weights_only load, checksum checked
    assert m.name == BUILTIN and resolve_model("builtin") == resolve_model(BUILTIN) == path


def test_denoise_without_model_uses_the_shipped_one(real_ct, tmp_path):
    res = CliRunner().invoke(app, ["denoise", str(real_ct), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert BUILTIN in " ".join(res.output.split())
    ds = pydicom.dcmread(next((tmp_path / "out").glob("*.dcm")))
    assert BUILTIN in ds.DerivationDescription and ds.ImageType[0] == "DERIVED"


def test_models_command_lists_and_shows(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and BUILTIN in res.output
    res = runner.invoke(app, ["models", BUILTIN])
    assert res.exit_code == 0 and BUILTIN in res.output
    res = runner.invoke(app, ["models", "no-such-model"])
    assert res.exit_code == 1 and "no shipped model" in res.output
    assert resolve_model(tmp_path) == tmp_path
