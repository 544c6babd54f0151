"""Training on hostile manifests and run folders (issue 13): one line, nothing left that blocks a rerun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from ldct_monai.cli import app
from ldct_monai.data import split_records
from ldct_monai.errors import InputError
from ldct_monai.train_config import CLI_FIELDS
from train_fixtures import TINY, make_manifest, one_thread  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return make_manifest(tmp_path_factory.mktemp("hostile"), size=32, slices=4, seed=2)


def _copy_manifest(manifest: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in manifest.iterdir():
        shutil.copy(f, dst / f.name)
    return dst


def _args(manifest: Path, out: Path, *extra: str) -> list[str]:
    tiny = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items() if not isinstance(v, bool) and k in CLI_FIELDS]
    return ["train", "--manifest", str(manifest), "--out", str(out), "--preset", "cpu-small", *tiny,
            "--no-tensorboard", *extra]


def test_deleted_files_are_one_line_before_config_json(manifest, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(manifest.parent / "data", data)
    man = _copy_manifest(manifest, tmp_path / "man")
    splits = json.loads((man / "splits.json").read_text())
    splits["data_root"] = str(data)
    (man / "splits.json").write_text(json.dumps(splits))
    victim = pd.read_csv(man / "train_fd.csv")["path"].iloc[1]
    (data / victim).unlink()
    with pytest.raises(InputError, match=rf"train_fd.csv: 1 of \d+ listed file\(s\) do not exist \(first: .*{victim}\)"):
        split_records(man, "train_fd", "fd", "full")
    out = tmp_path / "run"
    r = CliRunner().invoke(app, _args(man, out, "--max-steps=1"))
    assert r.exit_code == 1 and victim in r.output and "Traceback" not in r.output and r.output.count("Error:") == 1
    assert not out.exists()  # no config.json left to block a rerun


def test_failure_before_the_first_checkpoint_does_not_block_a_rerun(manifest, tmp_path, monkeypatch, one_thread):
    import ldct_monai.engine as engine

    def boom(*args, **kwargs):
        raise RuntimeError("applying transform <LoadDicomd>") from FileNotFoundError(2, "No such file or directory", "/data/x.dcm")

    monkeypatch.setattr(engine.CycleGAN, "train_step", boom)
    out = tmp_path / "run"
    r = CliRunner().invoke(app, _args(manifest, out, "--max-steps=1"))
    assert r.exit_code == 1 and "/data/x.dcm: cannot read a training slice (No such file or directory)" in r.output
    assert not out.exists()  # a plain rerun is not blocked by a config.json


def test_manifest_without_body_part_column(manifest, tmp_path, one_thread):
    man = _copy_manifest(manifest, tmp_path / "man")
    for split in ("train_ld", "train_fd", "val_ld", "val_fd"):
        pd.read_csv(man / f"{split}.csv").drop(columns=["body_part"]).to_csv(man / f"{split}.csv", index=False)
    out = tmp_path / "run"
    r = CliRunner().invoke(app, _args(man, out, "--max-steps=1"))  # cpu-small conditions the discriminators on it
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "train_ld.csv: no 'body_part' column, but --d-condition body-part, --d-window, " \
                                "--body-part-batches need the body part" in text
    assert "--d-condition none --no-d-window --no-body-part-batches" in text and not out.exists()
    r = CliRunner().invoke(app, _args(man, out, "--max-steps=1", "--d-condition=none", "--no-d-window",
                                      "--no-body-part-batches"))
    assert r.exit_code == 0, r.output


def test_resume_over_checkpoints_of_another_architecture(manifest, tmp_path, one_thread):
    out = tmp_path / "run"
    runner = CliRunner()
    assert runner.invoke(app, _args(manifest, out, "--max-steps=3")).exit_code == 0
    cfg = json.loads((out / "config.json").read_text())
    cfg["ngf"] = 8  # e.g. a config.json copied from another run
    (out / "config.json").write_text(json.dumps(cfg))
    r = runner.invoke(app, ["train", "--out", str(out), "--resume", "--max-steps", "4"])
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "Traceback" not in r.output and r.output.count("Error:") == 1
    assert "the checkpoint was written by another architecture than" in text and "size mismatch" in text


def test_overwrite_refuses_a_folder_that_is_not_a_run(manifest, tmp_path):
    out = tmp_path / "papers"
    out.mkdir()
    (out / "draft.docx").write_text("x")
    r = CliRunner().invoke(app, _args(manifest, out, "--max-steps=1", "--overwrite"))
    assert r.exit_code == 1 and "did not write (draft.docx)" in " ".join(r.output.split())
    assert (out / "draft.docx").exists()
