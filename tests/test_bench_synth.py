"""bench synth (ldct_monai.bench.synth): the reference and --from-series are timed and compared, memory is probed per length."""

from __future__ import annotations

import json
import math

import pytest
from typer.testing import CliRunner

from ldct_monai.cli import app


def _positive(x) -> bool:
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.mark.timeout(120)
def test_bench_synth_cli_reports_ratio_and_bounded_memory(tmp_path):
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(app, ["bench", "synth", "--slices", "3", "--size", "128", "--views", "16", "--repeats", "2",
                                 "--memory-lengths", "8,24", "--memory-views", "8", "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert (res["slices"], res["size"], res["views"], res["repeats"]) == (3, 128, 16, 2)
    ref, cand = res["reference"], res["candidate"]
    assert ref["chunk"] == 3 and len(ref["runs_s_per_slice"]) == len(cand["runs_s_per_slice"]) == 2
    assert all(_positive(t) for t in ref["runs_s_per_slice"] + cand["runs_s_per_slice"])
    assert _positive(res["ratio"]) and res["ratio_of_medians"] == pytest.approx(cand["s_per_slice"] / ref["s_per_slice"])
    pairs = [c / r for c, r in zip(cand["runs_s_per_slice"], ref["runs_s_per_slice"])]
    assert res["ratio_per_repeat"] == pytest.approx(pairs) and res["ratio"] == pytest.approx(sum(pairs) / 2)
    assert cand["dose_fraction"] == 0.25

    mem = res["memory"]
    assert [m["slices"] for m in mem] == [8, 24]
    assert all(_positive(m[k]) for m in mem for k in ("peak_rss_mib", "rss_base_mib", "peak_traced_mib", "s_per_slice"))
    short, long = mem
    # 3x the slices: the peak is one chunk of 8 slices (calibration: 3 and 6 slices), plus headers; a simulator
    # holding the series (as the pre-issue one did: HU, padding, noise and low-dose volumes) would add
    # several float32 volumes, over 3 MiB at 24 slices of 128 px (tracemalloc is exact: no machine noise)
    assert long["peak_traced_mib"] < 1.5 * short["peak_traced_mib"]
    assert long["peak_rss_mib"] - long["rss_base_mib"] < 3 * (short["peak_rss_mib"] - short["rss_base_mib"])
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["memory_peak_rss_mib"].keys() == {"8", "24"} and summary["ratio"] == pytest.approx(res["ratio"])


def test_bench_synth_refuses_bad_lengths():
    r = CliRunner().invoke(app, ["bench", "synth", "--memory-lengths", "8,x"])
    assert r.exit_code == 1 and "--memory-lengths" in r.output
