"""The benchmarks (ldct_monai.bench): the FLOP count is right, and bench denoise reports what it promises."""

from __future__ import annotations

import json

import pydicom
import pytest
from typer.testing import CliRunner

from ldct_monai.bench.denoise import write_bench_series
from ldct_monai.bench.timing import forward_flops
from ldct_monai.cli import app
from ldct_monai.dicom.reader import read_series
from ldct_monai.networks import ResNetGenerator


def test_forward_flops_hand_computed():
    # ngf=1, no residual blocks, 8x8 input; FLOPs = 2 * outputs * in_channels * k * k per convolution
    g = ResNetGenerator(ngf=1, n_blocks=0).eval()
    stem = 2 * 64 * 1 * 49  # 7x7, 1 -> 1 at 8x8
    down = 2 * (2 * 16) * 1 * 9 + 2 * (4 * 4) * 2 * 9  # 1 -> 2 at 4x4, 2 -> 4 at 2x2
    up = 2 * (2 * 16) * 4 * 9 + 2 * (1 * 64) * 2 * 9  # 4 -> 2 at 4x4, 2 -> 1 at 8x8
    head = 2 * 64 * 1 * 49
    assert forward_flops(g, (1, 1, 8, 8)) == stem + down + up + head
    gt = ResNetGenerator(ngf=1, n_blocks=0, upsample="transpose").eval()
    # a transposed conv costs inputs * out_channels * k * k multiply-adds: 4 -> 2 from 2x2, 2 -> 1 from 4x4
    assert forward_flops(gt, (1, 1, 8, 8)) == stem + down + 2 * (4 * 4) * 2 * 9 + 2 * (2 * 16) * 1 * 9 + head


def test_bench_series_is_a_valid_padded_ct_series(tmp_path):
    write_bench_series(tmp_path, 3, 64)
    s = read_series(tmp_path)
    sl = s.read_slice(0)
    assert s.shape == (3, 64, 64) and sl.padding is not None and (sl.stored[sl.padding] == -2000).all()
    assert pydicom.dcmread(s.slices[0].path).PixelRepresentation == 1


@pytest.mark.timeout(120)
def test_bench_cli_reports_ratios_and_memory(tmp_path):
    out = tmp_path / "bench.json"
    r = CliRunner().invoke(app, ["bench", "denoise", "--slices", "3", "--size", "64", "--ngf", "4", "--n-blocks", "1",
                                 "--batch-size", "1", "--device", "cpu", "--memory-lengths", "2,6", "--memory-ngf", "4",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    res = json.loads(out.read_text())
    assert res["slices"] == 3 and res["size"] == 64 and len(res["model_only"]["runs_s"]) == 2
    assert res["ratio_e2e_to_model"] == pytest.approx(res["end_to_end"]["seconds"] / res["model_only"]["seconds"])
    assert res["flop_floor"]["gflop_per_slice"] == pytest.approx(forward_flops(ResNetGenerator(ngf=4, n_blocks=1), (1, 1, 64, 64)) / 1e9)
    assert [m["slices"] for m in res["memory"]] == [2, 6] and all(m["peak_rss_mib"] > 50 for m in res["memory"])
    assert json.loads(r.stdout.strip().splitlines()[-1])["memory_peak_rss_mib"].keys() == {"2", "6"}
