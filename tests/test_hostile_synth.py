"""synth refuses, before any work, a configuration the machine cannot hold (issue 13)."""

from __future__ import annotations

import time

import pytest
from typer.testing import CliRunner

import ldct_monai.synth.tree as tree
from ldct_monai.cli import app
from ldct_monai.errors import InputError
from ldct_monai.synth.tree import SynthConfig, estimate_resources, synth_tree


def test_estimates_grow_with_the_request():
    small = estimate_resources(SynthConfig(patients=1, slices=16, size=256, body_parts=("C",)))
    assert 0.5 * 2**30 < small["memory"] < 2 * 2**30  # measured peak: ~1.0 GiB RSS
    big = estimate_resources(SynthConfig(slices=100000))
    assert big["memory"] > 100 * 2**30 and big["files"] == 3 * 100000 * 2


def test_slices_100000_refuses_up_front_with_the_estimate(tmp_path, monkeypatch):
    monkeypatch.setattr(tree, "available_memory", lambda: 16.0 * 2**30)
    t0 = time.perf_counter()
    r = CliRunner().invoke(app, ["synth", str(tmp_path / "out"), "--slices", "100000"])
    text = " ".join(r.output.split())
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "--slices 100000" in text and "GiB of memory, 16.0 GiB available" in text and "lower --slices" in text
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "out").exists()


def test_disk_too_small_refuses(tmp_path, monkeypatch):
    monkeypatch.setattr(tree, "free_disk", lambda path: 1e6)
    with pytest.raises(InputError, match=r"of disk for 96 files, 1 MiB free at"):
        synth_tree(tmp_path / "out", SynthConfig(patients=2, slices=8, size=256), progress=False)
    assert list(tmp_path.iterdir()) == []
