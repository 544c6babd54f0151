"""build-manifest: header scan, bad-file reasons, patient-disjoint hash splits, z-paired test set, CLI."""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from pathlib import Path

import pydicom
import pytest
from typer.testing import CliRunner

from conftest import write_series
from ldct_monai.cli import app
from ldct_monai.dicom.core import slice_position
from ldct_monai.dicom.scan import REASONS, SliceHeader
from ldct_monai.errors import InputError, OutputExistsError
from ldct_monai.manifest import load_split, manifest_hash
from ldct_monai.manifest_builder import ManifestConfig, build_manifest, plan_manifest
from ldct_monai.schema import DOSE_FILES

runner = CliRunner()


# ---------------------------------------------------------------------------------------------------
# helpers


def header(pid: str, dose: str, i: int, z: float, *, rows: int = 8, series: str | None = None) -> SliceHeader:
    """An in-memory slice header (plan tests need no files)."""
    series = series or f"{pid}.{dose}"
    return SliceHeader(
        path=f"{pid}/study/{series}/1-{i:03d}.dcm", patient_id=pid, study_uid=f"{pid}.study", series_uid=series,
        sop_uid=f"{series}.{i}", series_description="Full Dose Images" if dose == "full" else "Low Dose Images",
        body_part_examined="", z=z, rows=rows, cols=rows, pixel_spacing_row=0.7, pixel_spacing_col=0.7,
        slice_thickness=1.0, kvp=120.0, tube_current=None, exposure=None, ctdivol=None, kernel="B30f",
        manufacturer="x", instance_number=i + 1,
    )  # fmt: skip


def cohort(n_per_part: int, doses=("low", "full"), n_slices: int = 3, prefix_offset: int = 0, fd_only_every: int = 0):
    """Headers for C/L/N patients; every ``fd_only_every``-th patient has only a full-dose series (GE)."""
    hs = []
    for bp in "CLN":
        for k in range(prefix_offset, prefix_offset + n_per_part):
            pid = f"{bp}{k:03d}"
            ds = ("full",) if fd_only_every and k % fd_only_every == 0 else doses
            for dose in ds:
                hs += [header(pid, dose, i, float(i)) for i in range(n_slices)]
    return hs


def assert_manifest_rules(plan) -> None:
    """Patient-disjoint splits; one dose per train/val patient; test patients paired on z."""
    seen: dict[str, str] = {}
    for key in DOSE_FILES:
        for h in plan.rows[key]:
            assert seen.setdefault(h.patient_id, key) == key, f"{h.patient_id} in {seen[h.patient_id]} and {key}"
            assert h.series_description.lower().startswith("low" if key.endswith("_ld") else "full")
    for lo, fd in plan.pairs:
        assert lo.patient_id == fd.patient_id
        assert fd.patient_id not in seen, f"test patient {fd.patient_id} also in {seen.get(fd.patient_id)}"
        assert lo.series_description.startswith("Low") and fd.series_description.startswith("Full")
    for pid, p in plan.patients.items():
        assert p.split in ("train", "val", "test")
        if p.split == "test":
            assert p.paired and p.dose == "both"


def tcia_tree(root: Path, patients: dict[str, tuple[str, ...]], n_slices: int = 3, size: int = 8) -> None:
    """Write TCIA-style series: <pid>/<study>/1.000000-<Full|Low> Dose Images-<n>/1-00k.dcm."""
    for k, (pid, doses) in enumerate(sorted(patients.items())):
        for dose in doses:
            desc = "Full Dose Images" if dose == "full" else "Low Dose Images"
            write_series(root / pid / "12-23-2021-NA-NA-61870" / f"1.000000-{desc}-{k:05d}", n_slices, size,
                         patient_id=pid, description=desc, seed=k)  # fmt: skip


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------------------------------
# splitting (pure, in memory)


def test_splits_disjoint_one_dose_stratified_and_balanced():
    plan = plan_manifest(cohort(30, fd_only_every=3), ManifestConfig(seed=7))
    assert_manifest_rules(plan)
    by = defaultdict(Counter)
    for p in plan.patients.values():
        by[p.body_part][p.split] += 1
        if p.split in ("train", "val"):
            by[p.body_part][f"{p.split}_{p.dose}"] += 1
            by[p.body_part][f"{p.split}_{p.dose}_paired"] += len(p.series) == 2
        if len(p.series) == 1:  # full-dose-only (GE-like) patients never reach test
            assert p.split != "test" and p.dose == "full"
    for bp in "CLN":
        c = by[bp]
        assert c["train"] + c["val"] + c["test"] == 30
        assert c["train"] >= 12 and c["val"] >= 1 and c["test"] >= 1  # stratified: every split per body part
        for split in ("train", "val"):  # one dose per patient, balanced per body part (within one patient)
            if abs(c[f"{split}_low"] - c[f"{split}_full"]) > 1:  # only when FD-only patients outnumber ...
                assert c[f"{split}_full"] > c[f"{split}_low"] and c[f"{split}_full_paired"] == 0, (bp, split, c)
    # slice rows carry their patient's single dose
    for key in DOSE_FILES:
        for h in plan.rows[key]:
            assert plan.patients[h.patient_id].split == key.split("_")[0]


def test_adding_patients_never_moves_existing_ones():
    base = plan_manifest(cohort(20), ManifestConfig(seed=3))
    grown = plan_manifest(cohort(20) + cohort(25, prefix_offset=500), ManifestConfig(seed=3))
    assert len(grown.patients) == len(base.patients) + 75
    moved = [pid for pid, p in base.patients.items() if p.assigned_by == "hash" and grown.patients[pid].split != p.split]
    assert moved == []
    assert sum(p.assigned_by == "hash" for p in base.patients.values()) >= 57  # small-cohort rule: rare
    # a different seed gives a different split (the seed is actually used)
    other = plan_manifest(cohort(20), ManifestConfig(seed=4))
    assert any(other.patients[p].split != base.patients[p].split for p in base.patients)


def test_small_cohort_fills_every_split():
    # 3 patients per body part: the hash alone would often leave test or val empty
    for seed in range(5):
        plan = plan_manifest(cohort(3), ManifestConfig(seed=seed))
        assert_manifest_rules(plan)
        for bp in "CLN":
            splits = Counter(p.split for p in plan.patients.values() if p.body_part == bp)
            assert splits == {"train": 1, "val": 1, "test": 1}, (seed, bp, splits)
        # train has both doses over the three body parts (odd counts alternate)
        assert plan.rows["train_ld"] and plan.rows["train_fd"]


def test_one_series_per_patient_and_dose():
    hs = [header("C001", "full", i, float(i)) for i in range(3)]
    hs += [header("C001", "full", i, float(i), series="C001.fd.thick") for i in range(2)]
    hs += [header("C001", "low", i, float(i)) for i in range(3)]
    plan = plan_manifest(hs, ManifestConfig(ratios=(0.0, 0.0, 1.0)))
    assert plan.patients["C001"].series == {"full": "C001.full", "low": "C001.low"}  # most slices kept
    assert sorted((s.reason, s.path.split("/")[2]) for s in plan.skipped) == [("extra_series", "C001.fd.thick")] * 2
    assert len(plan.pairs) == 3
    few = plan_manifest(hs, ManifestConfig(ratios=(0.0, 0.0, 1.0), min_slices=3))
    assert Counter(s.reason for s in few.skipped) == {"too_few_slices": 2}


def test_test_pairs_matched_on_z_within_tolerance():
    low = [header("C001", "low", i, i * 2.0 + 0.1) for i in range(5)] + [header("C001", "low", 9, 30.0)]
    full = [header("C001", "full", i, i * 2.0) for i in range(6)]
    plan = plan_manifest(low + full, ManifestConfig(ratios=(0.0, 0.0, 1.0)))
    dz = sorted(round(lo.z - fd.z, 6) for lo, fd in plan.pairs)
    assert dz == [0.1] * 5  # spacing 2 mm, tolerance 0.25 -> 0.5 mm
    assert [fd.z for _, fd in sorted(plan.pairs, key=lambda p: p[1].z)] == [0.0, 2.0, 4.0, 6.0, 8.0]
    unmatched = sorted(s.path.rsplit("/", 1)[1] for s in plan.skipped if s.reason == "unmatched_z")
    assert unmatched == ["1-005.dcm", "1-009.dcm"]  # FD z=10 and LD z=30 have no partner
    # a tighter tolerance drops every pair
    tight = plan_manifest(low + full, ManifestConfig(ratios=(0.0, 0.0, 1.0), z_tolerance=0.01))
    assert tight.pairs == []


def test_dose_and_body_part_mapping_options():
    hs = [h._replace(series_description="FD 1mm", patient_id="P1", body_part_examined="CHEST") for h in cohort(1)[:3]]
    assert plan_manifest(hs, ManifestConfig()).patients == {}
    plan = plan_manifest(hs, ManifestConfig(fd_pattern=r"^FD\b"))
    assert plan.patients["P1"].body_part == "C" and plan.patients["P1"].dose == "full"
    # no TCIA prefix and no BodyPartExamined: skipped unless a default body part is given
    anon = [h._replace(patient_id="P2") for h in cohort(1)[:3]]
    assert {s.reason for s in plan_manifest(anon, ManifestConfig()).skipped} == {"unknown_body_part"}
    assert plan_manifest(anon, ManifestConfig(default_body_part="n")).patients["P2"].body_part == "N"
    with pytest.raises(InputError, match="ratios"):
        ManifestConfig(ratios=(0.7, 0.2, 0.2))
    with pytest.raises(InputError, match="body parts"):
        ManifestConfig(body_parts=("X",))


# ---------------------------------------------------------------------------------------------------
# scanning real files


def _make_bad_files(root: Path) -> dict[str, str]:
    """One file per reason next to a good tree; returns {relative path: expected reason}."""
    files = sorted(root.glob("L001/*/1.000000-Full Dose Images-*/*.dcm"))
    expect = {}

    def put(rel: str, data: bytes, reason: str) -> None:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        expect[rel] = reason

    def variant(rel: str, reason: str, **changes) -> None:
        ds = pydicom.dcmread(files[0])
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = f"2.25.{abs(hash(rel)) % 10**30}"
        for k, v in changes.items():
            if v is None:
                del ds[k]
            else:
                setattr(ds, k, v)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        ds.save_as(root / rel, enforce_file_format=True)
        expect[rel] = reason

    raw = files[0].read_bytes()
    put("metadata.csv", b"Series UID,Collection\n1.2.3,LDCT\n", "not_dicom")
    put("L001/s/junk.dcm", b"\x00" * 50, "not_dicom")
    put("L001/s/cut_pixels.dcm", raw[: len(raw) - 40], "truncated")
    put("L001/s/cut_header.dcm", raw[:300], "truncated")
    put("L001/s/dup/copy.dcm", raw, "duplicate_sop_uid")
    variant("L001/s/mr.dcm", "not_ct", Modality="MR", SOPClassUID="1.2.840.10008.5.1.4.1.1.4")
    variant("L001/s/scout.dcm", "localizer", ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    variant("L001/s/nopix.dcm", "no_pixel_data", PixelData=None)
    variant("L001/s/noipp.dcm", "missing_geometry", ImagePositionPatient=None)
    variant("L001/s/frames.dcm", "multiframe", NumberOfFrames=2)
    variant("L001/s/enhanced.dcm", "multiframe", SOPClassUID="1.2.840.10008.5.1.4.1.1.2.1")
    ds = pydicom.dcmread(files[0])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "2.25.777"
    ds.add_new(0x70290010, "LO", "DICOM-CT-PD dict")
    ds.add_new(0x70291010, "US", 736)
    ds.save_as(root / "L001/s/proj.dcm", enforce_file_format=True)
    expect["L001/s/proj.dcm"] = "projection_data"
    # a series of another description, a slice of the wrong size inside the full-dose series
    for p in write_series(root / "L001/s/1.000000-Soft Tissue-9", 2, 8, patient_id="L001", description="Soft Tissue"):
        expect[p.relative_to(root).as_posix()] = "unknown_dose"
    odd = write_series(root / "L001/s/odd", 1, 12, patient_id="L001", description="Full Dose Images",
                       series_uid=pydicom.dcmread(files[0]).SeriesInstanceUID, seed=99)  # fmt: skip
    expect[odd[0].relative_to(root).as_posix()] = "inconsistent_size"
    return expect


def test_every_bad_file_kind_is_skipped_with_its_reason(tmp_path):
    root = tmp_path / "LDCT"
    tcia_tree(root, {"L001": ("low", "full"), "L002": ("low", "full"), "L003": ("full",), "C004": ("low", "full")})
    expect = _make_bad_files(root)
    out = tmp_path / "m"
    cfg = ManifestConfig(seed=1, workers=1, single_dose=False, ratios=(0.5, 0.0, 0.5))
    summary = build_manifest(root, out, cfg, progress=False)
    skipped = {r["path"]: r for r in read_csv(out / "skipped.csv")}
    for rel, reason in expect.items():
        assert rel in skipped, f"{rel} missing from skipped.csv"
        assert skipped[rel]["reason"] == reason, (rel, skipped[rel])
        assert skipped[rel]["detail"]
    l003 = [r for p, r in skipped.items() if p.startswith("L003/")]
    assert len(l003) == 3 and {r["reason"] for r in l003} == {"single_dose_patient"}
    assert set(summary["skipped"]) <= set(REASONS)
    # every file appears exactly once: in one split file or in skipped.csv
    used = [r["path"] for k in DOSE_FILES for r in read_csv(out / f"{k}.csv")]
    used += [r[c] for r in read_csv(out / "test_pairs.csv") for c in ("ld_path", "fd_path")]
    listed = sorted(used + list(skipped))
    assert listed == sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert summary["rows"]["test_pairs"] > 0 and summary["rows"]["train_ld"] + summary["rows"]["train_fd"] > 0


def test_parallel_scan_gives_identical_bytes_and_is_deterministic(tmp_path):
    root = tmp_path / "LDCT"
    tcia_tree(root, {f"{bp}{k:03d}": ("low", "full") for bp in "CN" for k in range(4)} | {"C100": ("full",)}, n_slices=2)
    (root / "C000" / "notes.txt").write_text("not dicom")
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    build_manifest(root, a, ManifestConfig(seed=5, workers=1), progress=False)
    build_manifest(root, b, ManifestConfig(seed=5, workers=2), progress=False)
    build_manifest(root, c, ManifestConfig(seed=6, workers=1), progress=False)
    names = sorted(p.name for p in a.iterdir())
    assert names == ["skipped.csv", "splits.json", "test_pairs.csv", "train_fd.csv", "train_ld.csv", "val_fd.csv", "val_ld.csv"]
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    assert manifest_hash(a) == manifest_hash(b) != manifest_hash(c)
    # paths are relative to the data root recorded in splits.json; load_split makes them absolute
    assert json.loads((a / "splits.json").read_text())["data_root"] == str(root.resolve())
    df = load_split(a, "train_fd")
    assert all(Path(p).is_file() for p in df["path"])
    assert not any(Path(r["path"]).is_absolute() for r in read_csv(a / "train_fd.csv"))
    # existing output is refused without overwrite, replaced with it
    with pytest.raises(OutputExistsError):
        build_manifest(root, a, ManifestConfig(seed=5, workers=1), progress=False)
    build_manifest(root, a, ManifestConfig(seed=6, workers=1), overwrite=True, progress=False)
    assert manifest_hash(a) == manifest_hash(c)


def test_real_ge_slices_without_dose_label(real_ct, tmp_path):
    # The GE slices have no SeriesDescription: by default they are 'unknown_dose' and nothing is usable.
    with pytest.raises(InputError, match="no usable CT slices.*3 unknown_dose"):
        build_manifest(real_ct, tmp_path / "m", ManifestConfig(workers=1), progress=False)
    # Told what they are, they become a full-dose-only patient serving train/val.
    cfg = ManifestConfig(workers=1, default_dose="full", default_body_part="L")
    summary = build_manifest(real_ct, tmp_path / "m", cfg, progress=False)
    p = summary["patients"]["99000"]
    assert p["dose"] == "full" and p["split"] in ("train", "val") and p["doses_available"] == ["full"]
    rows = read_csv(tmp_path / "m" / f"{p['split']}_fd.csv")
    z_of = {f.name: slice_position(pydicom.dcmread(f)) for f in real_ct.glob("*.dcm")}
    assert [r["path"] for r in rows] == sorted(z_of, key=z_of.get) == ["03.dcm", "02.dcm", "01.dcm"]  # by z
    assert [float(r["z"]) for r in rows] == pytest.approx(sorted(z_of.values()), abs=1e-6)
    assert rows[0]["manufacturer"] == "GE MEDICAL SYSTEMS" and rows[0]["kernel"] == "STANDARD"


# ---------------------------------------------------------------------------------------------------
# CLI


def test_cli_errors_are_one_line(tmp_path):
    res = runner.invoke(app, ["build-manifest", str(tmp_path / "nope"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 1 and "does not exist" in res.output and "Traceback" not in res.output
    (tmp_path / "empty").mkdir()
    res = runner.invoke(app, ["build-manifest", str(tmp_path / "empty"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 1 and "no files found" in res.output
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("hello")
    res = runner.invoke(app, ["build-manifest", str(tmp_path / "junk"), "--out", str(tmp_path / "m")])
    assert res.exit_code == 1 and "no usable CT slices among 1 files" in res.output and "not_dicom" in res.output
    res = runner.invoke(app, ["build-manifest", str(tmp_path / "junk"), "--out", str(tmp_path / "m"), "--ratios", "0.8,0.2"])
    assert res.exit_code == 1 and "--ratios" in res.output
    assert not (tmp_path / "m").exists()


def test_cli_builds_with_filters_and_refuses_existing_output(tmp_path):
    root = tmp_path / "LDCT"
    tcia_tree(root, {f"{bp}{k:03d}": ("low", "full") for bp in "CL" for k in range(3)}, n_slices=2)
    out = tmp_path / "m"
    args = ["build-manifest", str(root), "--out", str(out), "--seed", "2", "--workers", "1",
            "--ratios", "0.8,0.1,0.1", "--body-parts", "C", "--max-patients", "2"]  # fmt: skip
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "train LD" in res.output and "over_max_patients" in res.output
    sj = json.loads((out / "splits.json").read_text())
    assert sorted(p[0] for p in sj["patients"]) == ["C", "C"] and sj["ratios"] == {"train": 0.8, "val": 0.1, "test": 0.1}
    reasons = Counter(r["reason"] for r in read_csv(out / "skipped.csv"))
    assert reasons["excluded_body_part"] == 12 and reasons["over_max_patients"] == 4
    res = runner.invoke(app, args)
    assert res.exit_code == 1 and "--overwrite" in res.output
    assert runner.invoke(app, [*args, "--overwrite", "--min-slices", "3"]).exit_code == 1  # nothing has 3 slices
    assert (out / "splits.json").is_file()  # the failed run left the old manifest in place
