"""Training checkpoints: atomic writes, keep-last-K, safe loading, RNG states as plain tensors.

A checkpoint is ``RUN_DIR/checkpoints/step_XXXXXXXX.pt``: one ``torch.save``'d dict of tensors and plain
Python types (networks, optimizers, schedulers, grad scaler, image pools, RNG states, step, epoch,
config), so it loads with ``torch.load(weights_only=True)`` -- a checkpoint file a user was handed can
never run code. It is written to a hidden temporary file beside the target, fsync'd and renamed
(``io_utils.atomic_write_bytes``): a ``kill -9`` mid-write leaves at worst a stray ``.step_*.tmp-*``
file, never a truncated checkpoint, and the previous checkpoint stays the latest one.
"""

from __future__ import annotations

import io
import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ldct_monai.errors import InputError
from ldct_monai.io_utils import atomic_write_bytes

log = logging.getLogger(__name__)

CHECKPOINT_DIRNAME = "checkpoints"
CHECKPOINT_FORMAT = 1
_NAME = re.compile(r"^step_(\d{8,})\.pt$")


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / CHECKPOINT_DIRNAME / f"step_{step:08d}.pt"


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first (temporary files of interrupted writes are ignored)."""
    d = Path(run_dir) / CHECKPOINT_DIRNAME
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := _NAME.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found)]


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch (CPU and CUDA) RNG states as tensors / plain types (weights_only-safe)."""
    np_state = np.random.get_state()
    py_version, py_internal, py_gauss = random.getstate()
    return {
        "python": [py_version, list(py_internal), py_gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]),
                  float(np_state[4])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` atomically as the checkpoint of ``step``; delete all but the newest ``keep``."""
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, "step": int(step), **state}, buf)
    path = checkpoint_path(run_dir, step)
    atomic_write_bytes(path, buf.getvalue())
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load one checkpoint with ``torch.load(weights_only=True)``.

    Raises:
        InputError: the file is missing, truncated, not a checkpoint, or holds objects that are not plain
            tensors/containers (a pickle that could run code is refused, never executed).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found.")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # UnpicklingError for unsafe globals, RuntimeError/EOFError for broken files
        raise InputError(f"{path}: cannot load checkpoint safely: {unsafe_load_reason(err)}.") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not an ldct-monai checkpoint (expected format {CHECKPOINT_FORMAT}).")
    return state


def unsafe_load_reason(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in our words.

    torch's own message advises loading with ``weights_only=False``, which would run whatever code the file
    holds: never repeat that. A refused global is named, so the user knows what the file contained.
    """
    import re

    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text) or re.search(r"Unsupported operand (\S+)", text)
    if found or "Weights only load failed" in text:
        held = f" ({found.group(1)})" if found else ""
        return (f"it holds a Python object{held} other than tensors and plain containers, which could run code "
                "when loaded, and ldct-monai loads weights only; use a file written by ldct-monai")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return f"{type(err).__name__}: {lines[0] if lines else 'no detail'}"


def load_latest(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint of a run that loads; falls back to older ones with a warning.

    Raises:
        InputError: no checkpoint, or none of them loads (every failure listed).
    """
    paths = list_checkpoints(run_dir)
    if not paths:
        raise InputError(f"{run_dir}: no checkpoint to resume from (expected {CHECKPOINT_DIRNAME}/step_*.pt).")
    failures = []
    for path in reversed(paths):
        try:
            return path, load_checkpoint(path, map_location)
        except InputError as err:
            log.warning("Skipping checkpoint: %s", err)
            failures.append(str(err))
    raise InputError(f"{run_dir}: no checkpoint loads: " + " | ".join(failures))
