"""Device, precision and environment facts shared by train, denoise, evaluate and the benchmarks."""

from __future__ import annotations

import contextlib
import importlib.metadata
import platform
from pathlib import Path

import torch

from ldct_monai.errors import InputError
from ldct_monai.schema import PRECISIONS


def resolve_device(device: str = "auto") -> torch.device:
    """'auto' -> cuda if available else cpu; 'cpu' / 'cuda' / 'cuda:N' as given (checked)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise InputError(f"--device must be auto, cpu or cuda[:N], found {device!r}.") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA GPU is available (use --device auto or cpu).")
    return dev


def autocast(device: torch.device, precision: str = "fp32") -> contextlib.AbstractContextManager:
    """One context for every precision: bf16/fp16 autocast, or a no-op for fp32."""
    if precision not in PRECISIONS:
        raise InputError(f"--precision must be one of {', '.join(PRECISIONS)}, found {precision!r}.")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide numerical results, for model cards and reports."""
    out = {"python": platform.python_version()}
    for name in ("ldct-monai", "torch", "monai", "pydicom", "numpy", "SimpleITK", "scikit-image"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def native_bf16(device: str = "auto") -> bool:
    """True when bf16 arithmetic is native where training runs: a CUDA GPU with bf16, or a CPU with
    AVX-512-BF16 or AMX (there bf16 autocast is ~1.5-1.7x faster per step; elsewhere it is emulated and slower)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="ascii", errors="replace")
    except OSError:  # not Linux: no cheap, reliable check; fp32 is the safe choice
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags
