"""Models as MONAI bundles: the layout, MONAI's own tools offline, zips, old folders, refused configs."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ldct_monai.bundle import CARD_KEY, INFERENCE, LICENSE, METADATA, README, SCHEMA_MD5, SCHEMA_PATH, WEIGHTS
from ldct_monai.bundle.trust import check_config, expression_problem
from ldct_monai.cli import app
from ldct_monai.config import HUWindow
from ldct_monai.errors import InputError
from ldct_monai.inference import Denoiser
from ldct_monai.modelio import export_model, load_model
from ldct_monai.models import package_model
from ldct_monai.networks import ResNetGenerator

ARCH = dict(ngf=4, n_blocks=1)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """RUN_DIR/model of a tiny random generator (not the identity: outputs differ from inputs)."""
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("run")
    gen = ResNetGenerator(**ARCH)
    export_model(run / "model", gen, ARCH, hu_window=HUWindow(), config={"method": "supervised", "ngf": 4},
                 manifest_hash="0123456789abcdef", step=3, extra={"validation": {"gain_db": 1.5}})
    return run / "model"


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test (the schema must never be downloaded)."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle, tmp_path / "b"))


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def test_export_writes_a_monai_bundle(bundle):
    for rel in (METADATA, INFERENCE, WEIGHTS, README, LICENSE):
        assert (bundle / rel).is_file(), rel
    meta = json.loads((bundle / METADATA).read_text())
    for key in ("version", "changelog", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
                "task", "description", "authors", "copyright", "intended_use", "eval_metrics"):
        assert meta[key], key
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["format"] == "hounsfield" and image["hu_window"] == [-1024.0, 3071.0] and image["value_range"] == [-1.0, 1.0]
    assert image["num_channels"] == 1 and image["dtype"] == "float32" and image["spatial_shape"] == ["16*n", "16*n"]
    assert meta["network_data_format"]["post_processed_outputs"]["pred"]["value_range"] == [-1024.0, 3071.0]
    card = meta[CARD_KEY]
    assert card["config"]["method"] == "supervised" and card["manifest_hash"] == "0123456789abcdef" and card["step"] == 3
    assert meta["eval_metrics"] == {"validation_gain_db": 1.5} and "not a medical device" in meta["intended_use"]
    state = torch.load(bundle / WEIGHTS, weights_only=True)  # a plain state_dict
    assert set(state) == set(ResNetGenerator(**ARCH).state_dict())
    assert hashlib.sha256((bundle / WEIGHTS).read_bytes()).hexdigest() == card["weights"]["sha256"]
    cfg = json.loads((bundle / INFERENCE).read_text())
    assert cfg["network_def"] == {"_target_": "ldct_monai.networks.ResNetGenerator", **ARCH}
    assert (cfg["hu_low"], cfg["hu_high"]) == (-1024.0, 3071.0) and cfg["run"] == ["$@evaluator.run()"]
    assert "Apache License" in (bundle / LICENSE).read_text() and "ldct-monai" in (bundle / README).read_text()
    m = load_model(bundle.parent)  # RUN_DIR works as before
    assert m.card["step"] == 3 and m.path == bundle and len(m.card_hash) == 16


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # TorchScript is what ckpt_export writes
def test_monai_verify_metadata_net_in_out_and_torchscript_offline(bundle, tmp_path, no_network):
    from monai.bundle import ckpt_export, verify_metadata, verify_net_in_out

    meta, cfg = str(bundle / METADATA), str(bundle / INFERENCE)
    verify_metadata(meta_file=meta, filepath=str(SCHEMA_PATH), hash_val=SCHEMA_MD5)  # vendored: no download
    verify_net_in_out("network_def", meta_file=meta, config_file=cfg, device="cpu")
    ts_path = tmp_path / "model.ts"
    ckpt_export("network_def", filepath=str(ts_path), ckpt_file=str(bundle / WEIGHTS), meta_file=meta, config_file=cfg)
    ts = torch.jit.load(str(ts_path))
    net = load_model(bundle).generator
    x = torch.rand(2, 1, 32, 48) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ts(x), net(x), rtol=0, atol=1e-5)  # [-1, 1] units: 0.02 HU
    import nibabel as nib
    from monai.bundle import ConfigWorkflow

    (tmp_path / "in").mkdir()
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 1), np.float32), np.eye(4)), tmp_path / "in" / "x.nii.gz")
    workflow = ConfigWorkflow(config_file=cfg, workflow_type="infer", logging_file=False,
                              dataset_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"))
    workflow.initialize()
    assert workflow.check_properties() == []  # MONAI's InferProperties: every required and optional id is right
    bad = tmp_path / "metadata.json"
    bad.write_text(json.dumps({k: v for k, v in json.loads((bundle / METADATA).read_text()).items() if k != "authors"}))
    with pytest.raises(ValueError, match="authors"):
        verify_metadata(meta_file=str(bad), filepath=str(SCHEMA_PATH), hash_val=SCHEMA_MD5)


def test_monai_bundle_run_denoises_a_nifti_folder(bundle, tmp_path):
    """The MONAI CLI itself, in a fresh process from the bundle folder: verify_metadata, then run."""
    import nibabel as nib

    src = tmp_path / "in"
    src.mkdir()
    hu = np.random.default_rng(0).uniform(-1000, 1500, (30, 34, 3)).astype(np.float32)  # not multiples of 4
    affine = np.diag([0.7, 0.7, 2.5, 1.0])
    nib.save(nib.Nifti1Image(hu, affine), src / "ct.nii.gz")
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = (f"{sys.executable} -m monai.bundle verify_metadata --meta_file configs/metadata.json --filepath {SCHEMA_PATH} "
           f"--hash_val {SCHEMA_MD5} && {sys.executable} -m monai.bundle run --config_file configs/inference.json "
           f"--dataset_dir {src} --output_dir {out}")
    proc = subprocess.run(["bash", "-c", cmd], cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "metadata is verified with no error" in proc.stdout + proc.stderr
    img = nib.load(out / "ct_denoised.nii.gz")
    np.testing.assert_allclose(img.affine, affine)
    got = img.get_fdata()
    den = Denoiser(load_model(bundle), device="cpu")
    want = np.stack([den(hu[:, :, k]) for k in range(hu.shape[2])], axis=-1)  # what ldct-monai denoise computes
    np.testing.assert_allclose(got, want, atol=0.01)  # HU; float32 rounding of the two window maps
    assert np.abs(got - hu).max() > 1.0  # the model did change the image


def test_load_from_a_zip_of_the_bundle(bundle, tmp_path):
    ref = load_model(bundle)
    hu = np.random.default_rng(1).uniform(-1000, 1000, (20, 24)).astype(np.float32)
    for name, prefix in (("top.zip", "tiny-model/"), ("flat.zip", "")):
        zpath = tmp_path / name
        with zipfile.ZipFile(zpath, "w") as zf:
            for f in sorted(bundle.rglob("*")):
                if f.is_file():
                    zf.write(f, prefix + f.relative_to(bundle).as_posix())
        m = load_model(zpath)
        assert m.path == zpath and m.card_hash == ref.card_hash
        np.testing.assert_array_equal(Denoiser(m, device="cpu")(hu), Denoiser(ref, device="cpu")(hu))
    two = tmp_path / "two.zip"
    with zipfile.ZipFile(two, "w") as zf:
        for p in ("a/", "b/"):
            zf.write(bundle / METADATA, p + METADATA)
    with pytest.raises(InputError, match="one bundle"):
        load_model(two)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("x.txt", "x")
    with pytest.raises(InputError, match="one bundle"):
        load_model(empty)


def test_denoise_and_evaluate_cli_take_a_zip(bundle, real_ct, tmp_path):
    import pydicom

    from test_evaluate import make_manifest

    zpath = tmp_path / "m.zip"
    with zipfile.ZipFile(zpath, "w") as zf:
        for f in sorted(bundle.rglob("*")):
            if f.is_file():
                zf.write(f, "m/" + f.relative_to(bundle).as_posix())
    runner = CliRunner()
    res = runner.invoke(app, ["denoise", str(real_ct), str(tmp_path / "out"), "--model", str(zpath), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    ds = pydicom.dcmread(next((tmp_path / "out").glob("*.dcm")))
    assert load_model(zpath).card_hash in ds.DerivationDescription
    man = make_manifest(tmp_path / "eval")
    res = runner.invoke(app, ["evaluate", "--manifest", str(man), "--model", str(zpath), "--out", str(tmp_path / "rep"),
                              "--device", "cpu", "--baselines", "none", "--max-slices", "1", "--n-figures", "0"])
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "rep" / "summary.json").read_text())
    assert summary["model"]["card_hash"] == load_model(zpath).card_hash


def test_package_model_ships_a_bundle(bundle, tmp_path):
    dst = package_model(bundle.parent, "tiny-v2", {"quality": {"summary": "tiny", "test_psnr_gain_db": 0.1},
                                                   "intended_use": "tests only"},
                        "# tiny-v2\n", version="2.0.0", models_dir=tmp_path)
    assert dst == tmp_path / "tiny-v2" and (dst / README).read_text() == "# tiny-v2\n"
    assert (dst / WEIGHTS).read_bytes() == (bundle / WEIGHTS).read_bytes()
    meta = json.loads((dst / METADATA).read_text())
    assert meta["version"] == "2.0.0" and meta["name"] == "tiny-v2" and meta["intended_use"] == "tests only"
    assert meta["eval_metrics"]["test_psnr_gain_db"] == 0.1
    assert load_model(dst).name == "tiny-v2"


def test_old_model_folder_loads_with_a_warning_and_converts(bundle, tmp_path):
    old = tmp_path / "old" / "model"
    old.mkdir(parents=True)
    weights = (bundle / WEIGHTS).read_bytes()
    card = {k: v for k, v in json.loads((bundle / METADATA).read_text())[CARD_KEY].items()}
    card.update(format=1, weights={"file": "generator.pt", "sha256": hashlib.sha256(weights).hexdigest()})
    (old / "generator.pt").write_bytes(weights)
    (old / "model.json").write_text(json.dumps(card))
    with pytest.warns(RuntimeWarning, match="ldct-monai models convert"):
        legacy = load_model(old.parent)
    res = CliRunner().invoke(app, ["models", "convert", str(old), str(tmp_path / "new")])
    assert res.exit_code == 0, res.output
    new = load_model(tmp_path / "new")
    assert (tmp_path / "new" / WEIGHTS).read_bytes() == weights and new.card["converted"]["from"].startswith("model.json")
    hu = np.random.default_rng(2).uniform(-1000, 1000, (2, 20, 28)).astype(np.float32)
    np.testing.assert_array_equal(Denoiser(new, device="cpu")(hu), Denoiser(legacy, device="cpu")(hu))
    res = CliRunner().invoke(app, ["models", "convert", str(tmp_path / "new"), str(tmp_path / "x")])
    assert res.exit_code == 1 and "already a MONAI bundle" in res.output
    res = CliRunner().invoke(app, ["models", "convert", str(old)])
    assert res.exit_code == 1 and "usage" in res.output


@pytest.mark.parametrize("entry, names", [
    ({"_target_": "os.system", "command": "touch PWNED"}, "'os.system' is outside"),
    ({"_target_": "builtins.eval", "source": "1"}, "'builtins.eval' is outside"),
    ("$__import__('os').system('touch PWNED')", "uses '__import__'"),
    ("$import subprocess", "imports 'subprocess'"),
    ("$torch.hub.load('someone/repo', 'model')", "'torch.hub.load', which fetches"),
    ({"_target_": "torch.hub.load", "repo_or_dir": "someone/repo"}, "fetches, imports or loads"),
    ({"_target_": "monai.utils.optional_import", "module": "os"}, "fetches, imports or loads"),
    ("$torch.load(@ckpt_path, weights_only=False)", "weights_only"),
    ({"_target_": "monai.transforms.LoadImage", "allow_pickle": True}, "allow_pickle"),
    ("$@network.__class__.__init__.__globals__", "private attribute"),
    ("$open('/etc/passwd').read()", "uses 'open'"),
    ({"_target_": "Compose", "_mode_": "debug", "transforms": []}, "_mode_ 'debug'"),
    ("%/tmp/other.json#network_def", "reads another file"),
    ({"_target_": "NotAMonaiComponent"}, "not a MONAI component"),
])
def test_config_naming_foreign_code_is_refused(bundle, tmp_path, entry, names):
    b = _copy(bundle, tmp_path)
    _edit_json(b / INFERENCE, lambda cfg: cfg.update(extra=entry))
    with pytest.raises(InputError, match="refused") as err:
        load_model(b)
    msg = str(err.value)
    assert names in msg and "extra" in msg and "\n" not in msg and str(b / INFERENCE) in msg
    assert not (tmp_path / "PWNED").exists() and not Path("PWNED").exists()


def test_metadata_expressions_are_refused_too(bundle, tmp_path):
    """MONAI merges metadata.json into the config as _meta_, so "@_meta_::x" would evaluate what it holds."""
    b = _copy(bundle, tmp_path)
    _edit_json(b / METADATA, lambda m: m.update(data_source="$__import__('os').system('touch PWNED')"))
    with pytest.raises(InputError, match=r"metadata.json: refused: .*data_source: expression"):
        load_model(b)


def test_network_def_must_be_our_generator_with_literal_arguments(bundle, tmp_path):
    b = _copy(bundle, tmp_path)
    for edit, match in [
        (lambda c: c["network_def"].update(_target_="monai.networks.nets.UNet"), "network_def must be"),
        (lambda c: c["network_def"].update(ngf="$4 * 2"), "plain values"),
        (lambda c: c["network_def"].update(ngf=8), "differs from the architecture"),
        (lambda c: c.update(hu_low=-1000.0), "HU window"),
    ]:
        shutil.copyfile(bundle / INFERENCE, b / INFERENCE)
        _edit_json(b / INFERENCE, edit)
        with pytest.raises(InputError, match=match):
            load_model(b)
    shutil.copyfile(bundle / INFERENCE, b / INFERENCE)
    _edit_json(b / METADATA, lambda m: m.pop("authors"))
    with pytest.raises(InputError, match="not valid MONAI bundle metadata .*'authors' is a required property"):
        load_model(b)
    shutil.copyfile(bundle / METADATA, b / METADATA)
    (b / WEIGHTS).write_bytes((b / WEIGHTS).read_bytes()[:-8])
    with pytest.raises(InputError, match="do not match the SHA-256"):
        load_model(b)


def test_our_own_inference_config_passes_the_check(bundle):
    check_config(json.loads((bundle / INFERENCE).read_text()), "inference.json")  # no exception
    assert expression_problem("[x * 2 for x in range(3)]") is None
    assert expression_problem("lambda d: torch.as_tensor(d)") is None
    assert expression_problem("@a + '/models/model.pt'") is None
