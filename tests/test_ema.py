"""``ema_decay``: validation and export use an exponential moving average of the LD -> FD generator's weights."""

from __future__ import annotations

import pytest
import torch

from ldct_monai.errors import InputError
from ldct_monai.train_config import TrainConfig
from train_fixtures import TINY, assert_resumes_exactly, make_manifest, one_thread  # noqa: F401 (a fixture)


def _batches(cfg: TrainConfig, man):
    """LD and FD patches (of different patients: the supervised step only needs two batches of one shape)."""
    from ldct_monai.data import UnpairedBatches, split_records

    return UnpairedBatches(cfg, split_records(man, "train_ld", "ld", "low"),
                           split_records(man, "train_fd", "fd", "full")).epoch(0)


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


@pytest.mark.parametrize("method", ["cyclegan", "supervised"])
def test_average_follows_the_ema_formula_and_is_the_validated_generator(tmp_path, one_thread, method):
    """Before any step the generator is the start itself; after the first step the average is a copy of the
    weights, after the second d * first + (1 - d) * second; the live generator is not the average."""
    from ldct_monai.engine import CycleGAN, Supervised

    man = make_manifest(tmp_path, size=48, slices=2)
    cfg = TrainConfig.from_dict({**TINY, "manifest": str(man), "out": "unused", "method": method, "ema_decay": 0.75,
                                 "lr": 1e-2})
    model = (Supervised if method == "supervised" else CycleGAN)(cfg, torch.device("cpu"), total_steps=20, decay_steps=0)
    live = model.gen if method == "supervised" else model.gens.ld2fd
    assert model.generator is live  # step 0: nothing averaged yet
    batches = _batches(cfg, man)
    model.train_step(*next(batches))
    first = _params(live)
    model.train_step(*next(batches))
    second = _params(live)
    assert model.generator is not live
    got = dict(model.generator.named_parameters())
    assert any(not torch.equal(first[k], second[k]) for k in first)  # the weights moved
    for k in first:
        torch.testing.assert_close(got[k], 0.75 * first[k] + 0.25 * second[k])


def test_ema_cyclegan_resumes_exactly_and_exports_the_average(tmp_path, one_thread):
    """The average is saved in checkpoints: 3 + 3 steps == 6 steps; the export is the average, not the live G."""
    from ldct_monai.checkpoint import load_latest
    from ldct_monai.modelio import load_model

    man = make_manifest(tmp_path, size=48, slices=3)
    kw = {**TINY, "manifest": str(man), "ema_decay": 0.9, "total_steps": 6, "val_every": 3, "checkpoint_every": 3}
    assert_resumes_exactly(kw, tmp_path, split=3)
    _, state = load_latest(tmp_path / "whole", map_location="cpu")
    exported = load_model(tmp_path / "whole").generator.state_dict()
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    live = {k.removeprefix("ld2fd."): v for k, v in state["gens"].items() if k.startswith("ld2fd.")}
    assert all(torch.equal(exported[k], ema[k]) for k in exported)
    assert any(not torch.equal(exported[k], live[k]) for k in exported)


@pytest.mark.parametrize("decay", [-0.1, 1.0])
def test_ema_decay_outside_its_range_is_refused(decay):
    with pytest.raises(InputError, match="ema_decay must be in"):
        TrainConfig(ema_decay=decay)
