"""The shared inference path: full slices, tiled (SlidingWindowInferer), streaming with bounded queues."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from ldct_monai.config import HUWindow
from ldct_monai.errors import InputError
from ldct_monai.inference import Denoiser, denoise_stream
from ldct_monai.modelio import export_model, load_model
from ldct_monai.networks import ResNetGenerator


@pytest.fixture(scope="module")
def identity(tmp_path_factory):
    d = tmp_path_factory.mktemp("identity")
    export_model(d / "model", ResNetGenerator(ngf=4, n_blocks=1).zero_head_(), dict(ngf=4, n_blocks=1), hu_window=HUWindow())
    return load_model(d)


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("random")
    export_model(d / "model", ResNetGenerator(ngf=4, n_blocks=1), dict(ngf=4, n_blocks=1), hu_window=HUWindow())
    return load_model(d)


def _hu(shape, seed=0):
    return np.random.default_rng(seed).uniform(-1000, 3000, shape).astype(np.float32)


@pytest.mark.parametrize("tile", [None, 32])
def test_identity_full_and_tiled(identity, tile):
    hu = _hu((2, 42, 54))  # not multiples of the stride, larger than a tile
    out = Denoiser(identity, device="cpu", batch_size=2, tile=tile)(hu)
    assert out.shape == hu.shape and out.dtype == np.float32
    np.testing.assert_allclose(out, hu, atol=2e-3)  # float round trip only: Gaussian blending of equal values


def test_tiled_is_monai_gaussian_sliding_window(random_model):
    from monai.inferers import sliding_window_inference

    hu = _hu((1, 96, 96), seed=1)
    den = Denoiser(random_model, device="cpu", tile=32, overlap=0.5, batch_size=3)
    tiled = den(hu)
    full = Denoiser(random_model, device="cpu")(hu)
    assert not np.allclose(full, tiled, atol=1.0)  # instance norm sees tile statistics, not the slice's
    x = torch.from_numpy(HUWindow().to_unit(hu))[:, None]
    with torch.inference_mode():
        ref = sliding_window_inference(x, (32, 32), 1, random_model.generator, overlap=0.5, mode="gaussian")
    np.testing.assert_allclose(tiled, HUWindow().to_hu(ref[:, 0].numpy()), atol=0.05)
    # a slice no bigger than a tile is one full-slice pass
    small = _hu((2, 32, 28), seed=2)
    np.testing.assert_array_equal(Denoiser(random_model, device="cpu", tile=32)(small), Denoiser(random_model, device="cpu")(small))


def test_single_slice_and_window_clipping(identity):
    hu = np.array([[-3024.0, -1024.0], [40.0, 5000.0]], dtype=np.float32)
    hu = np.pad(hu, ((0, 6), (0, 6)), mode="edge")
    out = Denoiser(identity, device="cpu")(hu)
    assert out.shape == (8, 8)
    assert out[0, 0] == pytest.approx(-1024.0) and out[1, 1] == pytest.approx(3071.0)  # clipped to the card window
    assert out[1, 0] == pytest.approx(40.0, abs=1e-3)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tile=30), "multiple of 4"),
        (dict(tile=16), "at least 32"),
        (dict(overlap=1.0), "overlap"),
        (dict(precision="fp64"), "--precision"),
        (dict(batch_size=0), "--batch-size"),
        (dict(device="tpu"), "--device"),
    ],
)
def test_bad_options(identity, kwargs, match):
    with pytest.raises(InputError, match=match):
        Denoiser(identity, **{"device": "cpu", **kwargs})


def test_bf16_runs_close_to_fp32(random_model):
    hu = _hu((2, 64, 64), seed=3)
    a = Denoiser(random_model, device="cpu")(hu)
    b = Denoiser(random_model, device="cpu", precision="bf16")(hu)
    err = np.abs(a - b)
    assert 0 < err.max() < 100  # bf16 has an 8-bit mantissa: a few HU, not exact (documented, measured)


def test_stream_keeps_order_bounds_queues_and_overlaps(identity):
    n, bs = 23, 4
    den = Denoiser(identity, device="cpu", batch_size=bs)
    loaded, saved, lock = [], {}, threading.Lock()
    max_in_flight = [0]

    def load(i):
        time.sleep(0.001)
        with lock:
            loaded.append(i)
            max_in_flight[0] = max(max_in_flight[0], len(loaded) - len(saved))
        return i, np.full((12, 16), float(i * 10), np.float32)

    def save(i, hu):
        time.sleep(0.002)
        with lock:
            saved[i] = hu

    order = []
    stats = denoise_stream(den, range(n), load, save, read_ahead=2 * bs, on_saved=order.append)
    assert order == list(range(n)) and sorted(saved) == list(range(n))
    for i in range(n):
        np.testing.assert_allclose(saved[i], i * 10.0, atol=1e-3)
    assert stats.items == n and stats.batches == 6
    # read-ahead + one batch in the model + 2 batches of pending writes; never the whole series
    assert max_in_flight[0] <= 2 * bs + bs + 2 * bs + 1 < n
    assert 0 < stats.model_s <= stats.wall_s


def test_stream_raises_first_error_and_stops(identity):
    den = Denoiser(identity, device="cpu", batch_size=2)
    saved = []

    def load(i):
        if i == 5:
            raise InputError("slice 5 is broken")
        return i, np.zeros((8, 8), np.float32)

    with pytest.raises(InputError, match="slice 5 is broken"):
        denoise_stream(den, range(50), load, lambda i, hu: saved.append(i))
    assert len(saved) <= 5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_cuda_matches_cpu(random_model, precision):
    hu = _hu((2, 64, 64), seed=4)
    cpu = Denoiser(random_model, device="cpu")(hu)
    gpu = Denoiser(random_model, device="cuda", precision=precision)(hu)
    np.testing.assert_allclose(gpu, cpu, atol=1.0 if precision == "fp32" else 100.0)
