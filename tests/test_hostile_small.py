"""Small cases of issue 13: the progress bar's rate and ETA, the unsafe-weights message."""

from __future__ import annotations

import argparse
import io
import json

import pytest
import torch
from rich.console import Console
from rich.progress import Progress

from ldct_monai.checkpoint import load_checkpoint
from ldct_monai.config import HUWindow
from ldct_monai.errors import InputError
from ldct_monai.modelio import export_model, load_model
from ldct_monai.networks import ResNetGenerator
from ldct_monai.progress import EtaColumn, RateColumn, average_rate


def test_rate_and_eta_are_right_for_bursty_work():
    clock = {"t": 0.0}
    bar = Progress(RateColumn(), EtaColumn(), console=Console(file=io.StringIO()), get_time=lambda: clock["t"])
    task = bar.add_task("Denoising", total=100, unit="slice")
    for burst in range(3):  # a batch of 4 slices every 3.1 s, the 4 written within 3 ms
        clock["t"] += 3.1
        for _ in range(4):
            clock["t"] += 0.001
            bar.advance(task)
        if burst == 0:  # rich's own estimate after the first batch: 3 slices in 3 ms
            assert bar.tasks[0].speed > 500 and RateColumn().render(bar.tasks[0]).plain == "1.29 slice/s"
    t = bar.tasks[0]
    assert average_rate(t) == pytest.approx(12 / 9.312, rel=1e-6)  # the real 1.29 slices/s
    assert RateColumn().render(t).plain == "1.29 slice/s"
    assert EtaColumn().render(t).plain == "0:01:08"  # 88 slices left at 1.29/s


def _unsafe(path):
    buf = io.BytesIO()
    torch.save({"format": 1, "step": 1, "x": argparse.Namespace(a=1)}, buf)  # a global torch refuses
    path.write_bytes(buf.getvalue())


def test_unsafe_weights_message_does_not_advise_weights_only_false(tmp_path):
    arch = dict(ngf=4, n_blocks=1)
    mdir = export_model(tmp_path / "model", ResNetGenerator(**arch), arch, hu_window=HUWindow())
    _unsafe(mdir / "models" / "model.pt")
    meta = json.loads((mdir / "configs" / "metadata.json").read_text())
    meta["ldct_monai"]["weights"].pop("sha256")
    (mdir / "configs" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(InputError) as err:
        load_model(mdir)
    msg = str(err.value)
    assert "cannot load weights safely: it holds a Python object (argparse.Namespace)" in msg
    assert "weights_only=False" not in msg and "weights_only` set to `False" not in msg and "\n" not in msg
    ck = tmp_path / "step_00000001.pt"
    _unsafe(ck)
    with pytest.raises(InputError, match=r"cannot load checkpoint safely: it holds a Python object \(argparse.Namespace\)") as err:
        load_checkpoint(ck)
    assert "False" not in str(err.value)
