"""``ldct-monai bench ...``: the benchmark commands (one module each: bench_<name>.py)."""

from __future__ import annotations

from ldct_monai.commands.bench_denoise import bench_denoise
from ldct_monai.commands.bench_manifest import bench_manifest
from ldct_monai.commands.bench_synth import bench_synth
from ldct_monai.commands.bench_train import bench_train

COMMANDS = {"manifest": bench_manifest, "train": bench_train, "denoise": bench_denoise, "synth": bench_synth}
