"""`evaluate`: a tiny paired manifest -> every report file, numbers from the data, CLI and bad input."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.ndimage import gaussian_filter
from typer.testing import CliRunner

from ldct_monai.baselines import flat_noise_std, gaussian_denoise, match_noise, nlm_denoise, tune_gaussian
from ldct_monai.cli import app
from ldct_monai.config import DEFAULT_HU_WINDOW
from ldct_monai.dicom.create import SeriesInfo, make_uid, write_ct_series
from ldct_monai.dicom.reader import read_hu
from ldct_monai.errors import InputError, OutputExistsError
from ldct_monai.evaluate import EvalConfig, evaluate
from ldct_monai.report import summary_markdown, summary_table
from ldct_monai.metrics import METRIC_COLUMNS, slice_metrics
from ldct_monai.modelio import export_model
from ldct_monai.networks import ResNetGenerator

SIZE = 64  # px; big enough for SSIM (11 px) and for flat tissue around the inserts (9 px noise windows)
Z = (0.0, 1.25)  # two slices per series
LD_NOISE, FD_NOISE = 40.0, 12.0  # HU
BODY = {"C": "CHEST", "L": "ABDOMEN", "N": "HEAD"}
METHODS = ["low_dose", "model", "gaussian", "nlm", "bm3d"]


def phantom(seed: int) -> np.ndarray:
    """(2, SIZE, SIZE) HU: a soft-tissue disc in air with fat, lung and bone inserts (varies with seed)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    r2 = (yy - SIZE / 2) ** 2 + (xx - SIZE / 2) ** 2
    img = np.where(r2 < (0.42 * SIZE) ** 2, 40.0, -1000.0)
    for hu, (cy, cx) in zip((-100.0, -800.0, 700.0), ((16, 18), (30, 16), (24, 32))):
        cy, cx = cy + rng.integers(-2, 3), cx + rng.integers(-2, 3)
        img = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < 9, hu, img)
    img = gaussian_filter(img, 1.2)  # the scanner's resolution: real CT edges are never one pixel sharp
    return np.stack([img, np.roll(img, 1, axis=1)])


def write(root: Path, pid: str, dose: str, clean: np.ndarray, seed: int) -> list[Path]:
    """One TCIA-style series of ``clean`` plus Gaussian noise of the dose's level."""
    noise = LD_NOISE if dose == "low" else FD_NOISE
    vol = clean + np.random.default_rng(seed).normal(0, noise, clean.shape)
    desc = "Low Dose Images" if dose == "low" else "Full Dose Images"
    info = SeriesInfo(
        patient_id=pid,
        study_uid=make_uid(pid, "study"),
        series_uid=make_uid(pid, desc),
        frame_of_reference_uid=make_uid(pid, "for"),
        series_description=desc,
        body_part=BODY[pid[0]],
    )
    return write_ct_series(root / pid / desc, vol, info, z_positions=list(Z))


def make_manifest(tmp: Path, ld_noise_scale: float = 1.0) -> Path:
    """Data tree + manifest: per body part one paired test patient, one val LD and one val FD patient.

    Paths are written relative to the data root (the contract), z and SOP UIDs from the files.
    """
    import pydicom

    root, man = tmp / "data", tmp / "manifest"
    man.mkdir(parents=True)
    pairs, val_ld, val_fd = [], [], []
    for k, bp in enumerate("CLN"):
        test, vld, vfd = f"{bp}001", f"{bp}002", f"{bp}003"
        clean = phantom(10 * k)
        ld = write(root, test, "low", clean, seed=100 + k) if ld_noise_scale == 1.0 else None
        if ld is None:  # same phantom, stronger low-dose noise (numbers must follow the data)
            vol = clean + np.random.default_rng(100 + k).normal(0, LD_NOISE * ld_noise_scale, clean.shape)
            info = SeriesInfo(test, make_uid(test, "study"), make_uid(test, "ld"), make_uid(test, "for"), series_description="Low Dose Images", body_part=BODY[bp])
            ld = write_ct_series(root / test / "Low Dose Images", vol, info, z_positions=list(Z))
        fd = write(root, test, "full", clean, seed=200 + k)
        for a, b in zip(ld, fd):
            da, db = pydicom.dcmread(a, stop_before_pixels=True), pydicom.dcmread(b, stop_before_pixels=True)
            pairs.append(
                {
                    "patient_id": test,
                    "body_part": bp,
                    "z": float(da.ImagePositionPatient[2]),
                    "ld_path": str(a.relative_to(root)),
                    "fd_path": str(b.relative_to(root)),
                    "ld_sop_uid": da.SOPInstanceUID,
                    "fd_sop_uid": db.SOPInstanceUID,
                }
            )
        for pid, dose, rows in ((vld, "low", val_ld), (vfd, "full", val_fd)):
            for i, f in enumerate(write(root, pid, dose, phantom(10 * k + 1), seed=300 + k + (dose == "full"))):
                ds = pydicom.dcmread(f, stop_before_pixels=True)
                rows.append(
                    {
                        "patient_id": pid,
                        "body_part": bp,
                        "dose": dose,
                        "series_uid": ds.SeriesInstanceUID,
                        "sop_uid": ds.SOPInstanceUID,
                        "path": str(f.relative_to(root)),
                        "z": Z[i],
                    }
                )
    pd.DataFrame(pairs).to_csv(man / "test_pairs.csv", index=False)
    pd.DataFrame(val_ld).to_csv(man / "val_ld.csv", index=False)
    pd.DataFrame(val_fd).to_csv(man / "val_fd.csv", index=False)
    cols = ["patient_id", "body_part", "dose", "series_uid", "sop_uid", "path", "z"]
    for name in ("train_ld.csv", "train_fd.csv"):
        pd.DataFrame(columns=cols).to_csv(man / name, index=False)
    pd.DataFrame(columns=["path", "reason"]).to_csv(man / "skipped.csv", index=False)
    (man / "splits.json").write_text(json.dumps({"data_root": str(root), "seed": 0, "ratios": [0.7, 0.2, 0.1]}))
    return man


def identity_model(path: Path) -> Path:
    arch = {"ngf": 4, "n_blocks": 1}
    return export_model(path / "model", ResNetGenerator(**arch).zero_head_(), arch, hu_window=DEFAULT_HU_WINDOW, step=0)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    man = make_manifest(tmp)
    identity_model(tmp / "run")
    config = EvalConfig(device="cpu", n_figures=2, crop=0.5)
    summary = evaluate(man, tmp / "run", tmp / "report", config, progress=False)
    return tmp, man, summary


def test_report_has_every_file_and_column(workspace):
    tmp, _, summary = workspace
    rep = tmp / "report"
    names = {p.name for p in rep.iterdir()}
    assert {"metrics.csv", "summary.csv", "summary.md", "summary.json", "figures"} <= names
    metrics = pd.read_csv(rep / "metrics.csv", dtype={"patient_id": str})
    for col in ("slice", "patient_id", "body_part", "z", "ld_sop_uid", "fd_sop_uid", "method", "window_center", "window_width", *METRIC_COLUMNS):
        assert col in metrics.columns
    assert len(metrics) == 6 * 5  # 3 body parts x 2 slices, 5 methods each
    assert sorted(set(metrics["method"])) == sorted(METHODS)
    assert metrics.groupby("body_part")["window_width"].first().to_dict() == {"C": 1500, "L": 400, "N": 80}
    summ = pd.read_csv(rep / "summary.csv")
    assert set(summ["body_part"]) == {"C", "L", "N", "all"} and len(summ) == 4 * 5
    assert (summ.loc[summ.method != "low_dose", "seconds_per_slice"] > 0).all()
    for col in METRIC_COLUMNS:
        for stat in ("mean", "std", "gain_mean", "gain_std"):
            assert f"{col}_{stat}" in summ.columns
    assert json.loads((rep / "summary.json").read_text())["results"]["all"]["model"]["n"] == 6
    md = (rep / "summary.md").read_text()
    assert "LDCTBench" in md and "Full range" in md and "non-local means" in md and "BM3D" in md and "s / slice" in md
    assert len(summary["figures"]) == 2 and all((rep / f["comparison"]).is_file() and (rep / f["difference"]).is_file() for f in summary["figures"])
    assert [f["body_part"] for f in summary["figures"]] == ["C", "L"]  # one per body part first


def test_identity_model_row_equals_input_row(workspace):
    tmp, _, _ = workspace
    m = pd.read_csv(tmp / "report" / "metrics.csv")
    a = m[m.method == "low_dose"].set_index("slice")[list(METRIC_COLUMNS)]
    b = m[m.method == "model"].set_index("slice")[list(METRIC_COLUMNS)]
    np.testing.assert_allclose(b.to_numpy(), a.to_numpy(), rtol=1e-4, atol=1e-3)


def test_metrics_recomputed_from_the_files(workspace):
    """metrics.csv's input row of a slice is exactly what the metric functions give on the DICOM pixels."""
    _, man, _ = workspace
    tmp = workspace[0]
    m = pd.read_csv(tmp / "report" / "metrics.csv", dtype={"patient_id": str})
    pairs = pd.read_csv(man / "test_pairs.csv")
    root = Path(json.loads((man / "splits.json").read_text())["data_root"])
    row = pairs.iloc[3]
    ld, fd = read_hu(root / row.ld_path), read_hu(root / row.fd_path)
    want = slice_metrics(ld, fd, row.body_part)[0]
    got = m[(m.method == "low_dose") & (m.ld_sop_uid == row.ld_sop_uid)].iloc[0]
    for col in METRIC_COLUMNS:
        assert got[col] == pytest.approx(want[col], rel=1e-5)
    # LD noise 40 HU vs FD noise 12 HU, independent: RMSE ~ sqrt(40^2 + 12^2) = 41.8 HU inside the body
    assert 25 < got["rmse_full"] < 45


def test_baselines_tuned_on_val_beat_the_input(workspace):
    _, _, summary = workspace
    res = summary["results"]["all"]
    for b in ("gaussian", "nlm", "bm3d"):
        assert res[b]["psnr_full"]["gain_mean"] > 3.0  # 40 HU white noise -> ~12 HU: several dB
        assert res[b]["rmse_full"]["gain_mean"] < 0
    # no val_pairs.csv: Gaussian by unpaired noise matching, NLM / BM3D at their default multipliers
    assert summary["baseline_tuning"] == {"gaussian": "val noise matching", "nlm": "default", "bm3d": "default"}
    assert {v["k"] for v in summary["baselines"]["nlm"]["per_body_part"].values()} == {0.9}
    assert {v["k"] for v in summary["baselines"]["bm3d"]["per_body_part"].values()} == {2.0}
    assert summary["test_noise_hu_median"]["L"] == pytest.approx(LD_NOISE, rel=0.15)  # sigma_hat of the test LD slices
    g = summary["baselines"]["gaussian"]["per_body_part"]["L"]
    assert g["val_ld_noise_hu"] == pytest.approx(LD_NOISE, rel=0.2)
    assert g["val_fd_noise_hu"] == pytest.approx(FD_NOISE, rel=0.2)
    assert g["filtered_noise_hu"] == pytest.approx(g["val_fd_noise_hu"], rel=0.05) and g["reached"]
    # summary gains are paired differences: mean(model) - mean(input) for the pooled rows
    e = summary["results"]["all"]
    assert e["nlm"]["psnr_ldctbench"]["gain_mean"] == pytest.approx(
        e["nlm"]["psnr_ldctbench"]["mean"] - e["low_dose"]["psnr_ldctbench"]["mean"], abs=1e-9
    )


def test_numbers_follow_the_data_and_are_deterministic(workspace, tmp_path):
    tmp, _, summary = workspace
    man2 = make_manifest(tmp_path / "noisier", ld_noise_scale=2.0)
    cfg = EvalConfig(device="cpu", n_figures=0, baselines=("gaussian",), gaussian_sigma=1.0)
    s2 = evaluate(man2, tmp / "run", tmp_path / "rep2", cfg, progress=False)
    assert s2["results"]["all"]["low_dose"]["psnr_full"]["mean"] < summary["results"]["all"]["low_dose"]["psnr_full"]["mean"] - 4.0
    assert s2["baselines"]["gaussian"]["criterion"] == "fixed by the user"
    # same input, same config -> identical metrics.csv (no randomness anywhere)
    cfg1 = EvalConfig(device="cpu", n_figures=0, baselines=("gaussian",), gaussian_sigma=1.0)
    evaluate(man2, tmp / "run", tmp_path / "rep3", cfg1, progress=False)
    assert (tmp_path / "rep2" / "metrics.csv").read_bytes() == (tmp_path / "rep3" / "metrics.csv").read_bytes()


def test_max_slices_and_output_refusal(workspace, tmp_path):
    tmp, man, _ = workspace
    cfg = EvalConfig(device="cpu", n_figures=1, baselines=(), max_slices=3)
    s = evaluate(man, tmp / "run", tmp_path / "r", cfg, progress=False)
    assert s["n_slices"] == 3 and s["slices_per_body_part"] == {"C": 1, "L": 1, "N": 1}  # spread evenly
    assert s["methods"] == ["low_dose", "model"] and s["baselines"] == {}
    before = (tmp_path / "r" / "metrics.csv").read_bytes()
    with pytest.raises(OutputExistsError):
        evaluate(man, tmp / "run", tmp_path / "r", cfg, progress=False)
    assert (tmp_path / "r" / "metrics.csv").read_bytes() == before


def test_bad_input_is_one_clear_error(workspace, tmp_path):
    tmp, man, _ = workspace
    bad = tmp_path / "bad"
    shutil.copytree(man, bad)
    df = pd.read_csv(bad / "test_pairs.csv")
    df.loc[0, "body_part"] = "X"
    df.to_csv(bad / "test_pairs.csv", index=False)
    with pytest.raises(InputError, match="unknown body part"):
        evaluate(bad, tmp / "run", tmp_path / "o1", EvalConfig(device="cpu"), progress=False)
    df.drop(columns=["fd_path"]).to_csv(bad / "test_pairs.csv", index=False)
    with pytest.raises(InputError, match="fd_path"):
        evaluate(bad, tmp / "run", tmp_path / "o2", EvalConfig(device="cpu"), progress=False)
    with pytest.raises(InputError, match="no model"):
        evaluate(man, tmp_path, tmp_path / "o3", EvalConfig(device="cpu"), progress=False)
    with pytest.raises(InputError, match="unknown baseline"):
        EvalConfig(baselines=("bm4d",))
    assert not any(p.name.startswith("o") for p in tmp_path.iterdir())  # nothing half-written


def test_tile_is_passed_only_when_given(workspace, tmp_path):
    """--tile reaches Denoiser(tile=...) when the Denoiser has tiling, else a clear one-line error."""
    import inspect

    from ldct_monai.inference import Denoiser

    tmp, man, _ = workspace
    cfg = EvalConfig(device="cpu", tile=32, n_figures=0, baselines=(), max_slices=1)
    if "tile" in inspect.signature(Denoiser.__init__).parameters:
        s = evaluate(man, tmp / "run", tmp_path / "t", cfg, progress=False)
        assert s["config"]["tile"] == 32 and s["results"]["all"]["model"]["n"] == 1
    else:
        with pytest.raises(InputError, match="--tile 32"):
            evaluate(man, tmp / "run", tmp_path / "t", cfg, progress=False)


def test_cli_runs_and_reports(workspace, tmp_path):
    tmp, man, _ = workspace
    runner = CliRunner()
    args = ["evaluate", "--manifest", str(man), "--model", str(tmp / "run"), "--out", str(tmp_path / "cli"), "--device", "cpu"]
    res = runner.invoke(app, [*args, "--baselines", "gaussian", "--gaussian-sigma", "1", "--n-figures", "1", "--max-slices", "2"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "cli" / "summary.json").is_file()
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["config"]["max_slices"] == 2
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "not empty" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, [*args[:-2], "--out", str(tmp_path / "x"), "--baselines", "bm4d,nlm"])
    assert res.exit_code == 1 and "unknown baseline" in res.output
    out = tmp_path / "k"
    res = runner.invoke(app, [*args[:-2], "--out", str(out), "--baselines", "nlm,bm3d", "--nlm-k", "0.8", "--bm3d-k", "1.5", "--max-slices", "1", "--n-figures", "0"])
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["baseline_tuning"] == {"nlm": "fixed", "bm3d": "fixed"} and list(s["baselines"]["bm3d"]["per_body_part"].values()) == [{"k": 1.5}]
    assert "s/slice" in res.output and "BM3D" in res.output
    res = runner.invoke(app, [*args[:-2], "--out", str(tmp_path / "y"), "--nlm-k", "-1"])
    assert res.exit_code == 1 and "NLM k must be a finite number >= 0" in " ".join(res.output.split())


def test_summary_table_and_markdown_from_summary(workspace):
    from rich.console import Console

    _, _, summary = workspace
    con = Console(record=True, width=200)
    con.print(summary_table(summary, per_body_part=True))
    text = con.export_text()
    assert "low-dose input" in text and "LDCTBench" in text and "head" in text
    psnr = summary["results"]["all"]["low_dose"]["psnr_full"]["mean"]
    assert f"{psnr:.2f}" in text and f"{psnr:.2f}" in summary_markdown(summary)
    # reporting needs only what evaluate wrote: summary.md re-renders from summary.json
    tmp = workspace[0]
    assert summary_markdown(json.loads((tmp / "report" / "summary.json").read_text())) == (tmp / "report" / "summary.md").read_text()


def test_noise_matching_hits_the_target():
    rng = np.random.default_rng(1)
    clean = phantom(0)[0]
    ld = [clean + rng.normal(0, 30, clean.shape) for _ in range(2)]
    assert flat_noise_std(ld[0]) == pytest.approx(30, rel=0.1)
    assert math.isnan(flat_noise_std(np.full((SIZE, SIZE), -1000.0)))  # no soft tissue -> no estimate
    t = tune_gaussian(ld, 10.0)
    assert t.reached and t.noise_hu == pytest.approx(10.0, rel=0.03)
    # white noise of std s through a Gaussian of sigma p has std s / (2 sqrt(pi) p): p ~ 30 / (10 * 3.54) ~ 0.85
    assert 0.6 < t.param < 1.1
    assert flat_noise_std(gaussian_denoise(ld[0], t.param)) < 12
    nlm = match_noise(nlm_denoise, ld, 10.0, (1.0, 150.0))
    assert nlm.reached and nlm.noise_hu <= 10.0
    assert match_noise(gaussian_denoise, ld, 50.0, (0.1, 5.0)).param == 0.1  # already below target


def add_val_pairs(man: Path, body_parts: str = "CL") -> None:
    """A hand-made val_pairs.csv (same columns as test_pairs.csv): one paired val patient per body part."""
    import pydicom

    root = Path(json.loads((man / "splits.json").read_text())["data_root"])
    rows = []
    for k, bp in enumerate(body_parts):
        pid = f"{bp}004"
        clean = phantom(10 * k + 2)
        ld = write(root, pid, "low", clean, seed=400 + k)
        fd = write(root, pid, "full", clean, seed=500 + k)
        for a, b in zip(ld, fd):
            da, db = pydicom.dcmread(a, stop_before_pixels=True), pydicom.dcmread(b, stop_before_pixels=True)
            rows.append(
                {
                    "patient_id": pid,
                    "body_part": bp,
                    "z": float(da.ImagePositionPatient[2]),
                    "ld_path": str(a.relative_to(root)),
                    "fd_path": str(b.relative_to(root)),
                    "ld_sop_uid": da.SOPInstanceUID,
                    "fd_sop_uid": db.SOPInstanceUID,
                }
            )
    pd.DataFrame(rows).to_csv(man / "val_pairs.csv", index=False)


def test_val_pairs_tune_each_baseline_and_seconds_are_reported(workspace, tmp_path):
    from rich.console import Console

    tmp, man, _ = workspace
    paired = tmp_path / "manifest"
    shutil.copytree(man, paired)
    add_val_pairs(paired)  # chest and abdomen only: head falls back to the pooled pairs
    cfg = EvalConfig(device="cpu", n_figures=0, baselines=("gaussian", "nlm", "bm3d"), bm3d_k=1.5, max_slices=3)
    s = evaluate(paired, tmp / "run", tmp_path / "rep", cfg, progress=False)
    assert s["baseline_tuning"] == {"gaussian": "val pairs", "nlm": "val pairs", "bm3d": "fixed"}
    for b, name in (("gaussian", "sigma_px"), ("nlm", "k")):
        per = s["baselines"][b]["per_body_part"]
        assert "val_pairs.csv" in s["baselines"][b]["criterion"]
        for bp in "CL":
            v = per[bp]
            tried = dict(map(tuple, v["tried"]))
            assert v["n_val_pairs"] == 2 and not v.get("pooled")
            assert v["val_psnr_db"] == pytest.approx(max(tried.values()), abs=1e-3)  # the best strength it tried
            assert v["val_psnr_db"] > v["val_input_psnr_db"] + 2.0
            assert v[name] == pytest.approx(max(tried, key=tried.get), rel=1e-3)
        assert per["N"]["pooled"] and per["N"]["n_val_pairs"] == 4
    # white 40 HU noise vs 12 HU: NLM wants h around the noise, the Gaussian a sigma near 1 px
    assert 0.3 < s["baselines"]["nlm"]["per_body_part"]["L"]["k"] < 3.0
    assert 0.4 < s["baselines"]["gaussian"]["per_body_part"]["L"]["sigma_px"] < 2.0
    assert s["baselines"]["bm3d"]["per_body_part"]["L"] == {"k": 1.5}
    sec = s["seconds_per_slice"]
    assert set(sec) == set(METHODS) and all(sec[m] > 0 for m in METHODS if m != "low_dose")
    assert s["results"]["L"]["bm3d"]["seconds_per_slice"] > 0
    summ = pd.read_csv(tmp_path / "rep" / "summary.csv")
    assert summ.loc[(summ.body_part == "all") & (summ.method == "nlm"), "seconds_per_slice"].item() == pytest.approx(sec["nlm"], rel=1e-4)
    md = (tmp_path / "rep" / "summary.md").read_text()
    assert "tuning: val pairs" in md and "tuning: fixed" in md and "[pooled over body parts]" in md
    con = Console(record=True, width=100)
    con.print(summary_table(s))
    assert "s/slice" in con.export_text()


def test_reference_model_is_scored_beside_the_model(workspace, tmp_path):
    """--reference: a second model on the same slices; here the model is the identity and the reference the
    shipped denoiser, so the reference row differs from the input row and the model row does not."""
    tmp, man, _ = workspace
    cfg = EvalConfig(device="cpu", n_figures=0, baselines=(), max_slices=3, reference="builtin")
    s = evaluate(man, tmp / "run", tmp_path / "r", cfg, progress=False)
    assert s["methods"] == ["low_dose", "model", "reference"]
    assert s["reference_model"]["name"] and s["method_labels"]["reference"].endswith("(reference)")
    res = s["results"]["all"]
    assert res["model"]["psnr_full"]["gain_mean"] == pytest.approx(0.0, abs=1e-3)
    assert abs(res["reference"]["psnr_full"]["gain_mean"]) > 0.01 and res["reference"]["seconds_per_slice"] > 0
    assert "(reference)" in (tmp_path / "r" / "summary.md").read_text()


def test_slices_per_body_part_picks_evenly_within_each_part(workspace, tmp_path):
    tmp, man, _ = workspace
    s = evaluate(man, tmp / "run", tmp_path / "r", EvalConfig(device="cpu", n_figures=0, baselines=(), slices_per_body_part=1),
                 progress=False)
    assert s["slices_per_body_part"] == {"C": 1, "L": 1, "N": 1}
    with pytest.raises(InputError, match="slices per body part"):
        EvalConfig(slices_per_body_part=0)
