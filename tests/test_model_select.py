"""model_select: "val-noise" exports the validation step whose G(LD) noise is nearest FD's, "val-pairs" the best paired gain."""

from __future__ import annotations

import csv
import math

import pytest
import torch
from train_fixtures import TINY as BASE_TINY
from train_fixtures import make_manifest, one_thread  # noqa: F401 (fixture)

from ldct_monai.checkpoint import list_checkpoints, load_checkpoint
from ldct_monai.engine import _select_best, train
from ldct_monai.errors import InputError
from ldct_monai.modelio import load_model
from ldct_monai.train_config import TrainConfig

TINY = dict(BASE_TINY, val_every=2, checkpoint_every=2, keep_checkpoints=10, total_steps=6)
pytestmark = pytest.mark.usefixtures("one_thread")


def test_selection_rule_hand_computed():
    g = torch.nn.Conv2d(1, 1, 1)
    best = _select_best({}, 0, {"noise_g_ld": 50.0, "noise_fd": 30.0}, g, "val-noise")
    assert best["step"] == 0 and best["score"] == pytest.approx(20.0)
    with torch.no_grad():
        g.weight.fill_(7.0)
    best = _select_best(best, 50, {"noise_g_ld": 35.0, "noise_fd": 30.0}, g, "val-noise")  # |35 - 30| = 5 < 20
    assert best["step"] == 50 and best["score"] == pytest.approx(5.0)
    with torch.no_grad():
        g.weight.fill_(-1.0)  # the kept state is a copy, not a view of the live weights
    assert float(best["state"]["weight"].flatten()[0]) == 7.0
    assert _select_best(best, 100, {"noise_g_ld": 20.0, "noise_fd": 30.0}, g, "val-noise")["step"] == 50  # over-smoothed: 10
    assert _select_best(best, 150, {"noise_g_ld": 25.0, "noise_fd": 30.0}, g, "val-noise")["step"] == 50  # tie keeps the earlier
    assert _select_best(best, 200, {"noise_g_ld": math.nan, "noise_fd": 30.0}, g, "val-noise")["step"] == 50
    # val-pairs: the highest paired gain wins (score = -gain), ties keep the earlier step
    best = _select_best({}, 0, {"gain_db": 3.0}, g, "val-pairs")
    assert best["score"] == pytest.approx(-3.0)
    assert _select_best(best, 50, {"gain_db": 2.0}, g, "val-pairs")["step"] == 0
    assert _select_best(best, 50, {"gain_db": 3.0}, g, "val-pairs")["step"] == 0
    assert _select_best(best, 50, {"gain_db": 3.5}, g, "val-pairs")["step"] == 50


def test_val_noise_export_is_the_best_validation_step(tmp_path):
    manifest = make_manifest(tmp_path / "m", size=32, slices=4, seed=1)
    base = dict(manifest=str(manifest), **TINY)
    run = train(TrainConfig.from_preset("cpu-small", out=str(tmp_path / "sel"), model_select="val-noise", **base))
    rows = list(csv.DictReader((run / "val_metrics.csv").open()))
    scores = {int(r["step"]): abs(float(r["noise_g_ld"]) - float(r["noise_fd"])) for r in rows}
    want = min(scores, key=lambda s: (scores[s], s))
    card = load_model(run).card
    assert card["step"] == want and card["selection"]["by"] == "val-noise" and card["selection"]["last_step"] == 6
    assert card["selection"]["score_hu"] == pytest.approx(scores[want], abs=1e-3)  # val_metrics.csv keeps 6 digits
    exported = load_model(run).generator.state_dict()
    if want == 0:  # the identity start: the head is zero
        assert float(exported["head.1.weight"].abs().sum()) == 0.0
    else:
        ck = load_checkpoint(next(p for p in list_checkpoints(run) if p.name == f"step_{want:08d}.pt"))
        assert torch.equal(exported["head.1.weight"], ck["gens"]["ld2fd.head.1.weight"])
    # the same run exporting the last generator differs only in what it exports
    last = train(TrainConfig.from_preset("cpu-small", out=str(tmp_path / "last"), **base))
    assert load_model(last).card["step"] == 6 and "selection" not in load_model(last).card
    # resume carries the best-so-far record: stop at 4, resume to 6, same selection
    half = train(TrainConfig.from_preset("cpu-small", out=str(tmp_path / "half"), model_select="val-noise",
                                         max_steps=4, **base))
    resumed = train(TrainConfig.from_preset("cpu-small", out=str(half), model_select="val-noise", resume=True, **base))
    assert load_model(resumed).card["step"] == want


def test_model_select_is_checked():
    with pytest.raises(InputError, match="model_select must be one of last, val-noise"):
        TrainConfig.from_preset("cpu-small", model_select="best")
