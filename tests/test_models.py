"""The shipped denoiser: a MONAI bundle, found by default, loads safely, converted without changing its outputs."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from ldct_monai.bundle import CARD_KEY, INFERENCE, LICENSE, METADATA, README, SCHEMA_MD5, SCHEMA_PATH, WEIGHTS
from ldct_monai.cli import app
from ldct_monai.inference import Denoiser
from ldct_monai.modelio import convert_model, load_model
from ldct_monai.models import BUILTIN, builtin_model_dir, resolve_model, shipped_models

# SHA-256 of the shipped weights as first exported (generator.pt of commit 4a6de78): the bundle kept them.
V1_WEIGHTS_SHA256 = "b8a291ae669151bf83028b1692de3846c44c3866c39b021211b7d8aeb46aeb25"


def test_builtin_is_shipped_as_a_bundle_with_card_and_recipe():
    assert BUILTIN in shipped_models()
    path = builtin_model_dir()
    for rel in (METADATA, INFERENCE, WEIGHTS, README, LICENSE):
        assert (path / rel).is_file(), rel
    meta = json.loads((path / METADATA).read_text())
    card = meta[CARD_KEY]
    assert card["config"]["method"] == "supervised" and card["architecture"]["kwargs"]["norm"] == "none"
    for key in ("training_data", "quality", "task", "intended_use", "manifest_hash"):
        assert card[key], key
    # the measured quality is in MONAI's eval_metrics, per body part; the version is the card's
    gains = meta["eval_metrics"]["test_windowed_psnr_gain_db"]
    assert set(gains) == {"chest", "abdomen", "head", "all"} and all(v > 0 for v in gains.values())
    assert meta["version"] == "2.0.0" and "2.0.0" in meta["changelog"]
    assert hashlib.sha256((path / WEIGHTS).read_bytes()).hexdigest() == card["weights"]["sha256"]
    assert card["training_domain"]["kernel_classes"] and card["training_domain"]["slice_thickness_mm"] == [1.0, 3.0]
    # v1 stays shipped, its weights byte for byte those of the pre-bundle generator.pt
    v1 = builtin_model_dir("ldct-denoiser-v1")
    assert hashlib.sha256((v1 / WEIGHTS).read_bytes()).hexdigest() == V1_WEIGHTS_SHA256
    assert (path / WEIGHTS).stat().st_size < 20 * 2**20
    assert (path.parent / "recipes" / f"{BUILTIN}.yaml").is_file()
    m = load_model(resolve_model(None))  # weights_only load, checksum checked
    assert m.name == BUILTIN and resolve_model("builtin") == resolve_model(BUILTIN) == path


def test_shipped_bundle_passes_monai_checks_offline():
    from monai.bundle import verify_metadata, verify_net_in_out

    path = builtin_model_dir()
    verify_metadata(meta_file=str(path / METADATA), filepath=str(SCHEMA_PATH), hash_val=SCHEMA_MD5)
    verify_net_in_out("network_def", meta_file=str(path / METADATA), config_file=str(path / INFERENCE), device="cpu")


def test_conversion_keeps_the_shipped_models_outputs(tmp_path):
    """Rebuild the pre-bundle folder (generator.pt + model.json, card format 1), convert it, compare outputs."""
    path = builtin_model_dir("ldct-denoiser-v1")
    card = json.loads((path / METADATA).read_text())[CARD_KEY]
    old = tmp_path / "old"
    old.mkdir()
    (old / "generator.pt").write_bytes((path / WEIGHTS).read_bytes())
    legacy_card = {k: v for k, v in card.items() if k not in ("converted", "intended_use")}
    legacy_card.update(format=1, weights={"file": "generator.pt", "sha256": V1_WEIGHTS_SHA256})
    (old / "model.json").write_text(json.dumps(legacy_card))
    with pytest.warns(RuntimeWarning, match="models convert"):
        before = load_model(old)
    after = load_model(convert_model(old, tmp_path / "new"))
    hu = np.random.default_rng(0).uniform(-1000, 1500, (2, 40, 44)).astype(np.float32)
    out = Denoiser(before, device="cpu")(hu)
    np.testing.assert_array_equal(Denoiser(after, device="cpu")(hu), out)
    np.testing.assert_array_equal(Denoiser(load_model(path), device="cpu")(hu), out)
    assert np.abs(out - hu).max() > 1.0


def test_denoise_without_model_uses_the_shipped_one(real_ct, tmp_path):
    res = CliRunner().invoke(app, ["denoise", str(real_ct), str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert BUILTIN in " ".join(res.output.split())
    ds = pydicom.dcmread(next((tmp_path / "out").glob("*.dcm")))
    assert BUILTIN in ds.DerivationDescription and ds.ImageType[0] == "DERIVED"


def test_models_command_lists_and_shows(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["models"])
    assert res.exit_code == 0 and BUILTIN in res.output and "models convert" in res.output
    res = runner.invoke(app, ["models", BUILTIN])
    assert res.exit_code == 0 and BUILTIN in res.output and "monai.bundle run" in res.output
    res = runner.invoke(app, ["models", "no-such-model"])
    assert res.exit_code == 1 and "no shipped model" in res.output
    res = runner.invoke(app, ["models", "a", "b"])
    assert res.exit_code == 1 and "usage" in res.output
    assert resolve_model(tmp_path) == tmp_path
