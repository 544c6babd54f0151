"""Hostile output paths for the shared atomic-output helper (ldct_monai.io_utils), see docs/errors.md."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import REAL_CT, write_series
from ldct_monai.cli import app
from ldct_monai.errors import InputError, OutputExistsError
from ldct_monai.io_utils import OWNER_FILE, atomic_output_dir, atomic_write_bytes, check_output_dir, foreign_files



def _write(out: Path, name: str = "a.txt", text: str = "1", **kw) -> None:
    with atomic_output_dir(out, **kw) as tmp:
        (tmp / name).write_text(text)


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_dangling_symlink_writes_the_target(tmp_path):
    target = tmp_path / "disk" / "out"
    target.parent.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    _write(link)
    assert link.is_symlink() and (target / "a.txt").read_text() == "1"
    assert _listing(target.parent) == ["out"]  # no temporary folder left beside the target
    with pytest.raises(OutputExistsError):
        _write(link)


def test_dangling_symlink_into_a_missing_folder_is_refused(tmp_path):
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "usb" / "out")  # an unmounted drive: its mount folder is missing
    with pytest.raises(InputError, match=r"symbolic link to .*usb/out, which does not exist, nor does its folder"):
        _write(link)
    assert _listing(tmp_path) == ["link"] and not (tmp_path / "usb").exists()


def test_symlink_to_an_empty_folder_fills_that_folder(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    link = tmp_path / "link"
    link.symlink_to(target)
    _write(link)
    assert link.is_symlink() and (target / "a.txt").read_text() == "1"
    assert _listing(tmp_path) == ["link", "real"]
    _write(link, "b.txt", overwrite=True)  # our own output: replaced
    assert _listing(target) == ["b.txt"] and link.is_symlink()


def test_symlink_loop_is_one_line(tmp_path):
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(InputError, match="loop of symbolic links"):
        _write(tmp_path / "a")


@pytest.mark.skipif(not os.access("/dev/shm", os.W_OK), reason="no /dev/shm (a second filesystem) to link to")
def test_symlink_to_another_filesystem_renames_there(tmp_path):
    other = Path("/dev/shm") / f"ldct-test-{uuid.uuid4().hex}"
    other.mkdir()
    try:
        if os.stat(other).st_dev == os.stat(tmp_path).st_dev:
            pytest.skip("/dev/shm is on the same filesystem here")
        link = tmp_path / "out"
        link.symlink_to(other / "out")
        _write(link)  # the temporary folder is beside the target, so no EXDEV on the final rename
        assert (other / "out" / "a.txt").read_text() == "1"
        assert _listing(other) == ["out"] and _listing(tmp_path) == ["out"]
    finally:
        shutil.rmtree(other, ignore_errors=True)


@pytest.mark.parametrize("name", [".", ".."])
def test_current_folder_is_refused_before_any_work(tmp_path, monkeypatch, name):
    here = tmp_path / "p" / "here"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    with pytest.raises(InputError, match="current folder or holds it"):
        check_output_dir(Path(name), overwrite=True)
    with pytest.raises(InputError, match="current folder or holds it"):
        _write(Path(name))
    assert _listing(tmp_path / "p") == ["here"] and _listing(here) == []


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputError, match=r"no space left on the device .*MiB free.*nothing was written"):
        with atomic_output_dir(out) as tmp:
            (tmp / "half.dcm").write_bytes(b"x")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert _listing(tmp_path) == []
    # wrapped by a library (chained): still recognised
    with pytest.raises(InputError, match="no space left"):
        with atomic_output_dir(out):
            try:
                raise OSError(errno.EDQUOT, "Disk quota exceeded")
            except OSError as err:
                raise RuntimeError("writer failed") from err
    assert _listing(tmp_path) == []


def test_full_disk_in_atomic_write_bytes(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(InputError, match=r"step\.pt: no space left on the device"):
        atomic_write_bytes(tmp_path / "step.pt", b"123")
    assert _listing(tmp_path) == []


def test_overwrite_refuses_a_folder_of_other_files(tmp_path):
    out = tmp_path / "home"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    (out / "photo.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match=r"replaces only ldct-monai output, .* holds 2 file\(s\) ldct-monai did not "
                                         r"write \(photo.png, thesis.tex\)"):
        check_output_dir(out, overwrite=True)
    with pytest.raises(InputError, match="did not write"):
        _write(out, overwrite=True)
    assert _listing(out) == ["photo.png", "thesis.tex"]


def test_overwrite_refuses_source_dicom_but_accepts_ours(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in REAL_CT.glob("*.dcm"):
        shutil.copy(f, src / f.name)  # a scanner's files: .dcm, but not written by ldct-monai
    assert foreign_files(src)[1] == 3
    with pytest.raises(InputError, match="3 file"):
        check_output_dir(src, overwrite=True)
    ours = tmp_path / "ours"
    write_series(ours, n_slices=2, size=16)  # written by ldct_monai.dicom.create: signed in its file meta
    (ours / "summary.csv").write_text("a,b\n")  # our suffix, next to signed files
    assert foreign_files(ours) == ([], 0)
    check_output_dir(ours, overwrite=True)
    (ours / "notes.txt").write_text("x")
    assert foreign_files(ours)[1] == 1


def test_stale_temp_of_a_killed_run_is_removed_or_mentioned(tmp_path, caplog):
    dead = tmp_path / ".out.tmp-dead"
    dead.mkdir()
    (dead / "half.dcm").write_bytes(b"x")
    (dead / OWNER_FILE).write_text(f"{2**22 + 12345}@{os.uname().nodename}\n")  # above pid_max: never alive
    unknown = tmp_path / ".out.tmp-old"  # an older version's temp folder: no owner file
    unknown.mkdir()
    other = tmp_path / ".outside.tmp-x"  # another OUT_DIR's temporary folder: not ours to judge
    other.mkdir()
    with caplog.at_level(logging.INFO, logger="ldct_monai.io_utils"):
        _write(tmp_path / "out")
    assert not dead.exists() and unknown.exists() and other.exists()
    text = caplog.text
    assert "Removed" in text and ".out.tmp-dead" in text and ".out.tmp-old" in text and "owner unknown" in text


def test_killed_between_the_two_renames_is_mentioned_not_deleted(tmp_path, caplog):
    old = tmp_path / ".out.old-abc"
    (old / "x").mkdir(parents=True)
    (old / "x" / "previous.dcm").write_bytes(b"x")
    (old / OWNER_FILE).write_text(f"{2**22 + 12345}@{os.uname().nodename}\n")
    with caplog.at_level(logging.INFO, logger="ldct_monai.io_utils"):
        check_output_dir(tmp_path / "out", overwrite=False)
    assert (old / "x" / "previous.dcm").exists() and "holds the previous output" in caplog.text


def test_failed_final_rename_restores_the_previous_output(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _write(out, "old.txt")
    real = os.replace
    calls = []

    def busy(src, dst):
        calls.append((src, dst))
        if Path(dst) == out and ".tmp-" in str(src):
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", busy)
    with pytest.raises(InputError, match=r"cannot move the finished output into place \(Device or resource busy\)"):
        _write(out, "new.txt", overwrite=True)
    monkeypatch.setattr(os, "replace", real)
    assert _listing(out) == ["old.txt"] and _listing(tmp_path) == ["out"]


def test_mount_point_is_filled_in_place(tmp_path, monkeypatch):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda p: Path(p) == mnt)
    _write(mnt)  # a rename over a mount point fails (EBUSY): write inside it instead
    assert _listing(mnt) == ["a.txt"] and _listing(tmp_path) == ["mnt"]
    _write(mnt, "b.txt", overwrite=True)
    assert _listing(mnt) == ["b.txt"]


def test_denoise_cli_follows_a_dangling_link_and_refuses_dot(identity_model, tmp_path, monkeypatch):
    src = tmp_path / "in"
    write_series(src, n_slices=2, size=16)
    (tmp_path / "disk").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "disk" / "den")
    runner = CliRunner()
    r = runner.invoke(app, ["denoise", str(src), str(link), "--model", str(identity_model), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "disk" / "den").glob("*.dcm"))) == 2 and _listing(tmp_path / "disk") == ["den"]
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    r = runner.invoke(app, ["denoise", str(src), ".", "--model", str(identity_model), "--device", "cpu"])
    assert r.exit_code == 1 and "current folder" in r.output and "Traceback" not in r.output
    assert _listing(work) == [] and ".work" not in " ".join(_listing(tmp_path))
