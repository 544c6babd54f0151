"""`ldct-monai train`: the flags are the fields of ``TrainConfig`` marked ``cli``, plus --config FILE.

The options are generated from the dataclass, so the CLI and the config cannot drift apart: field
``max_steps`` is ``--max-steps``, booleans are ``--flag/--no-flag``, and each option's help is the help
declared with the field (``train_config.opt``). Fields without a flag are set in the ``--config`` file.
Options left out keep the value of the layer below (dataclass default < --preset < --config FILE < flags;
with --resume the run's saved config.json).

Multi-GPU / multi-node: ``torchrun --nproc-per-node=N -m ldct_monai.cli train ...`` (DDP, rank 0 writes).
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import re
import shutil
import time
from dataclasses import fields, replace
from pathlib import Path
from typing import Any, Optional

import typer

from ldct_monai import train_config as tc
from ldct_monai.progress import console

log = logging.getLogger(__name__)

_TYPES = {"int": int, "float": float, "str": str, "bool": bool}
_FIRST = ("manifest", "out", "preset", "max_steps", "seed", "device", "precision", "resume", "overwrite")


def _run(config_file: Path | None, **values: Any) -> None:
    """Build the config from the layers and train."""
    from ldct_monai.engine import train as run_training

    given = {k: v for k, v in values.items() if v is not None}
    if given.get("resume"):
        out = given.get("out")
        saved = Path(out or ".") / "config.json"
        if not out or not saved.is_file():
            raise tc.InputError(f"--resume needs --out RUN_DIR of an earlier run (no {saved}).")
        base = json.loads(saved.read_text())
        base["max_steps"] = 0  # --resume runs to the end of the schedule unless --max-steps is given again
        cfg = tc.TrainConfig.from_dict({**base, **given}, source=str(saved))
    elif config_file is not None:
        cfg = tc.TrainConfig.from_file(config_file, **given)
    else:
        preset = given.pop("preset", None)
        if preset is None:
            import torch

            preset = "matlab" if torch.cuda.is_available() else "cpu-small"
            log.info("Preset %s (no --preset given; %s).", preset,
                     "a GPU is present" if preset == "matlab" else "no GPU: the small CPU model; --preset matlab for the reference")
        cfg = tc.TrainConfig.from_preset(preset, **given)
    rank0 = os.environ.get("RANK", "0") == "0"
    cfg = _check_before_training(cfg)
    if rank0:
        console.print(f"[bold]train[/] preset {cfg.preset}: {cfg.patch_size}px patches, batch {cfg.batch_size}, "
                      f"ngf {cfg.ngf}, {cfg.n_blocks} blocks, {cfg.precision}, device {cfg.device} -> {cfg.out}",
                      highlight=False)
    started = time.time()
    try:
        run_dir = run_training(cfg)
    except BaseException as err:
        if rank0:
            _forget_failed_start(cfg, started)
        if isinstance(err, Exception):
            message = _one_line(err, cfg)
            if message is not None:
                raise tc.InputError(message) from err
        raise
    if rank0:
        console.print(f"[green]done[/]: model in {run_dir / 'model'}; curves {run_dir / 'loss_curves.png'}; "
                      f"previews in {run_dir / 'previews'}", highlight=False)


BODY_PART_OPTIONS = "--d-condition body-part, --d-window, --body-part-batches"


def _needs_body_part(cfg: tc.TrainConfig) -> list[str]:
    """The options of ``cfg`` that use each slice's body part."""
    return [flag for flag, on in (("--d-condition body-part", cfg.d_condition == "body-part"), ("--d-window", cfg.d_window),
                                  ("--body-part-batches", cfg.body_part_batches)) if on]


def _is_run_config(path: Path) -> bool:
    """A training run's ``config.json`` (it holds no 'ldct-monai' signature, but these fields)."""
    if path.name != "config.json":
        return False
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and {"manifest", "out", "preset", "seed"} <= set(doc)


def _check_before_training(cfg: tc.TrainConfig) -> tc.TrainConfig:
    """Checks the engine does not make, before anything is written; returns the config to run.

    - RUN_DIR: a symbolic link is resolved (the run is written where it points); with ``--overwrite`` it must
      not be the current folder and must hold only a training run's files (``io_utils.check_output_dir``).
    - body part: the options that use it need a ``body_part`` column with known codes in both train splits.

    Raises:
        InputError: as above.
    """
    from ldct_monai.schema import BODY_PARTS
    from ldct_monai.io_utils import check_output_dir, resolve_output
    from ldct_monai.manifest import load_split

    if cfg.out:
        out = Path(cfg.out)
        if out.is_symlink():
            cfg = replace(cfg, out=str(resolve_output(out)))
        if cfg.overwrite and not cfg.resume:
            check_output_dir(Path(cfg.out), overwrite=True, signature=_is_run_config)
    needs = _needs_body_part(cfg)
    if not needs or not cfg.manifest:
        return cfg
    for split in ("train_ld", "train_fd"):
        path = Path(cfg.manifest) / f"{split}.csv"
        try:
            df = load_split(Path(cfg.manifest), split)
        except tc.InputError:
            continue  # the engine reports a missing or unreadable split
        turn_off = "rebuild the manifest with build-manifest, or train without them (--d-condition none --no-d-window --no-body-part-batches)"
        if "body_part" not in df.columns:
            raise tc.InputError(f"{path}: no 'body_part' column, but {', '.join(needs)} need the body part of every "
                                f"slice; {turn_off}.")
        codes = df["body_part"].fillna("").astype(str).str.strip().str.upper()
        unknown = int((~codes.isin(BODY_PARTS)).sum())
        if unknown == len(df):
            raise tc.InputError(f"{path}: no row has a known body part ({'/'.join(BODY_PARTS)}), but {', '.join(needs)} "
                                f"need it; {turn_off}.")
        if unknown:
            log.warning("%s: %d of %d rows have no known body part (%s); %s see them as 'unknown'.", path, unknown,
                        len(df), "/".join(BODY_PARTS), ", ".join(needs))
    return cfg


def _forget_failed_start(cfg: tc.TrainConfig, started: float) -> None:
    """Remove RUN_DIR when this invocation created it and failed before its first checkpoint.

    Without it, the ``config.json`` left behind makes a plain rerun fail with "run folder exists". A run folder
    that has a checkpoint is kept (continue it with --resume); one that was there before is never touched.
    """
    from ldct_monai.checkpoint import list_checkpoints

    run_dir = Path(cfg.out) if cfg.out else None
    if run_dir is None or cfg.resume or not run_dir.is_dir():
        return
    saved = run_dir / "config.json"
    try:
        ours = saved.stat().st_mtime >= started - 1.0  # written by this invocation (the engine's _save_config)
    except OSError:
        return
    if ours and not list_checkpoints(run_dir):
        shutil.rmtree(run_dir, ignore_errors=True)
        log.info("Removed %s: the run failed before its first checkpoint.", run_dir)


def _one_line(err: Exception, cfg: tc.TrainConfig) -> str | None:
    """One line for an exception the engine lets through from torch or MONAI, or None to keep it as it is."""
    text = str(err)
    if "Error(s) in loading state_dict" in text:
        first = next((ln.strip() for ln in text.splitlines()[1:] if ln.strip()), "")
        first = first if len(first) < 240 else first[:237] + "..."
        return (f"{Path(cfg.out) / 'checkpoints'}: the checkpoint was written by another architecture than "
                f"{Path(cfg.out) / 'config.json'} describes ({first}); start a new run, or restore the config.json "
                "of these checkpoints.")
    from ldct_monai.errors import LdctError

    e: BaseException | None = err
    for _ in range(10):  # MONAI wraps a transform's error in RuntimeError("applying transform ...")
        if e is None:
            break
        if isinstance(e, LdctError):
            return str(e)
        if isinstance(e, OSError) and e.filename:
            return f"{e.filename}: cannot read a training slice ({e.strerror or type(e).__name__})."
        e = e.__cause__ or e.__context__
    # errors from DataLoader worker processes arrive as text: "...InputError: <message>"
    m = re.search(r"(?:InputError|LdctError): (.+)", text)
    if m:
        return m.group(1).strip()
    m = re.search(r"(?:FileNotFoundError|PermissionError|IsADirectoryError): \[Errno \d+\] ([^:]+): '([^']+)'", text)
    if m:
        return f"{m.group(2)}: cannot read a training slice ({m.group(1)})."
    return None


def _build_command():
    params = [inspect.Parameter("config_file", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                default=typer.Option(None, "--config", help="YAML or JSON file of config fields "
                                                     "(may set 'preset'; any field, also those without a flag: "
                                                     "docs/training.md); flags given on the command line win."))]
    cli = [f for f in fields(tc.TrainConfig) if f.name in tc.CLI_FIELDS]
    ordered = sorted(cli, key=lambda f: (_FIRST.index(f.name) if f.name in _FIRST else 99))
    for f in ordered:
        typ = _TYPES[f.type if isinstance(f.type, str) else f.type.__name__]
        flag = "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{f.name.replace('_', '-')}"] if typ is bool else [flag]
        if f.name == "preset":
            helptext = f"Preset: {', '.join(tc.PRESETS)} (default: matlab with a GPU, cpu-small without)."
        elif f.name in ("manifest", "out"):
            helptext = tc.field_help(f.name)
        else:
            helptext = f"{tc.field_help(f.name)} [default: {f.default!r}, or the preset's]"
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[typ],
                                        default=typer.Option(None, *decls, help=helptext, show_default=False)))

    def train(**kwargs: Any) -> None:
        """Train the CycleGAN (LD <-> FD) on a manifest and export the LD->FD generator to RUN_DIR/model."""
        config_file = kwargs.pop("config_file", None)
        _run(config_file, **kwargs)

    train.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return train


train = _build_command()
