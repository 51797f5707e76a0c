"""The files of a training run folder, and their safe reading and writing.

::

    RUN/config.json      {"format": "retina-deploy/run", "train": TrainConfig, "model": ModelConfig,
                          "class_names": [...], "preprocess": PreprocessConfig}
    RUN/last/, RUN/best/ checkpoints (``retina_deploy.model.checkpoint``); best/ only with a validation set
    RUN/train_state.pt   everything a resume needs (model, optimizer, weight average, progress, RNG), one atomic file
    RUN/metrics.csv      per-iteration losses and lr, per-validation AP (``engine.MetricsLog``)
    RUN/train.log        the log of rank 0

``train_state.pt`` repeats the model weights so that it is self-consistent: a kill between writing
``last/`` and the state file can never pair weights with another iteration's optimizer state.
It holds only tensors, numbers, strings, lists and dicts, and is read with ``weights_only=True``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from retina_deploy.core.errors import CheckpointError, ConfigError
from retina_deploy.core.fileio import atomic_path, check_format, read_format_json, write_json_atomic

RUN_FORMAT = "retina-deploy/run"
STATE_FORMAT = "retina-deploy/train-state"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
STATE_NAME = "train_state.pt"
METRICS_NAME = "metrics.csv"
LOG_NAME = "train.log"
LAST_NAME = "last"
BEST_NAME = "best"
RUN_CONFIG_KEYS = ("format", "format_version", "train", "model", "class_names", "preprocess")


def check_new_run_dir(out: Path) -> None:
    """A new run needs ``out`` absent or an empty folder (anything else might be a previous run), in a
    place it can write (``retina_deploy.core.outputs``)."""
    from retina_deploy.core.outputs import check_output_dir

    if out.is_dir() and any(out.iterdir()):
        what = "a previous run" if (out / CONFIG_NAME).is_file() else "files"
        raise ConfigError(f"--out {out} already holds {what}; use --resume {out} to continue it, or another --out")
    check_output_dir(out, flag="--out")


def remove_failed_start(run_dir: Path, *, remove_dir: bool) -> None:
    """After a new run failed before its first checkpoint: delete what it wrote, so ``--out`` works again.

    Nothing is removed once a checkpoint or train state exists (the run can then be resumed).
    """
    if (run_dir / STATE_NAME).exists() or (run_dir / LAST_NAME).exists() or (run_dir / BEST_NAME).exists():
        return
    for name in (CONFIG_NAME, LOG_NAME, METRICS_NAME):
        (run_dir / name).unlink(missing_ok=True)
    if remove_dir and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()


def write_run_config(run_dir: Path, config: dict[str, Any]) -> None:
    """Create ``run_dir`` and write its ``config.json`` (``config`` holds the RUN_CONFIG_KEYS but format*)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / CONFIG_NAME, {"format": RUN_FORMAT, "format_version": FORMAT_VERSION, **config})


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a run folder; ConfigError when the folder is not a training run."""
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        raise ConfigError(f"--resume {run_dir}: not a training run folder ({CONFIG_NAME} is missing)")
    raw = read_format_json(path, RUN_FORMAT, FORMAT_VERSION, "a training run config", ConfigError)
    if sorted(raw) != sorted(RUN_CONFIG_KEYS):
        raise ConfigError(f"{path}: keys {sorted(raw)} differ from {sorted(RUN_CONFIG_KEYS)}")
    return raw


def save_train_state(run_dir: Path, state: dict[str, Any]) -> None:
    """Write ``train_state.pt`` atomically (temp file + rename)."""
    with atomic_path(run_dir / STATE_NAME) as tmp:
        try:
            torch.save({"format": STATE_FORMAT, "format_version": FORMAT_VERSION, **state}, tmp)
        except RuntimeError as e:  # torch's writer reports a full disk as a RuntimeError without errno
            raise CheckpointError(f"{run_dir / STATE_NAME}: cannot write (disk full?): {str(e)[:160]}") from e


def load_train_state(run_dir: Path) -> dict[str, Any] | None:
    """The saved state of a run, or None when it was stopped before its first checkpoint."""
    path = run_dir / STATE_NAME
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or unsafe files
        raise CheckpointError(f"{path}: unreadable train state ({type(e).__name__}: {str(e)[:160]})") from e
    return check_format(state, path, STATE_FORMAT, FORMAT_VERSION, "a retina-deploy train state", CheckpointError)


def attach_run_log(run_dir: Path) -> Callable[[], None]:
    """Send the toolkit's INFO logs to ``run_dir/train.log`` (and to stderr if logging is not configured).

    Returns a function that detaches the handlers again.
    """
    logger = logging.getLogger("retina_deploy")
    handlers: list[logging.Handler] = [logging.FileHandler(run_dir / LOG_NAME, encoding="utf-8")]
    if not logging.getLogger().handlers:
        handlers.append(logging.StreamHandler(sys.stderr))
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    old_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    for handler in handlers:
        handler.setLevel(logging.INFO)
        handler.setFormatter(formatter)
        logger.addHandler(handler)

    def detach() -> None:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(old_level)

    return detach
