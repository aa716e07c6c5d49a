"""Loggers for a run: CSV always (when enabled), Weights & Biases online / offline / disabled."""

from __future__ import annotations

import netrc
import os
import secrets
import string
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger

from invlab.config import Config, to_container
from invlab.files import atomic_write_text


def wandb_credentials_available() -> bool:
    """True when W&B has an API key (environment or ~/.netrc for the configured server)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_wandb_mode(mode: str) -> str:
    if mode == "auto":
        return "online" if wandb_credentials_available() else "offline"
    return mode


WANDB_ID_FILE = "wandb_id.txt"


def wandb_run_id(run_dir: Path) -> str:
    """The run's W&B id, kept in ``<run_dir>/wandb_id.txt`` so that ``--resume`` continues the
    same W&B run (online and offline); a new id is written the first time."""
    path = run_dir / WANDB_ID_FILE
    if path.is_file() and path.read_text().strip():
        return path.read_text().strip()
    # W&B's own generator is internal API (wandb.sdk.lib.runid); same alphabet and length.
    run_id = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))
    atomic_write_text(path, run_id + "\n")
    return run_id


def _init_wandb(cfg: Config, run_dir: Path, mode: str) -> tuple[Any, list[str]]:
    import wandb

    w = cfg.logger.wandb
    kwargs = {
        "id": wandb_run_id(run_dir),
        "resume": "allow",
        "project": w.project,
        "entity": w.entity,
        "group": w.group,
        "tags": list(w.tags),
        "name": cfg.name,
        "dir": str(run_dir),
        "config": to_container(cfg),
        "reinit": "finish_previous",
    }
    notes: list[str] = []
    if mode == "online":
        try:
            run = wandb.init(
                mode="online", settings=wandb.Settings(init_timeout=w.init_timeout), **kwargs
            )
            return run, notes
        except Exception as err:  # any failure to reach the server: keep training, offline
            msg = f"W&B could not reach the server ({type(err).__name__}: {err}); logging offline."
            warnings.warn(msg, stacklevel=2)
            notes.append(msg)
            wandb.teardown()  # the failed attempt still holds the run id in W&B's service
    run = wandb.init(mode="offline", settings=wandb.Settings(quiet=True), **kwargs)
    where = Path(run.dir).parent
    notes.append(f"W&B offline run in {where}; upload it with `wandb sync {where}`.")
    return run, notes


def csv_version(run_dir: Path, resume: bool) -> str:
    """``csv/metrics.csv`` for a new run; ``csv/resumed-<k>/`` for its k-th resumption, because
    Lightning's CSV logger rewrites an existing file with only the rows it logged itself."""
    if not resume:
        return ""
    k = 1
    while (run_dir / "csv" / f"resumed-{k}").exists():
        k += 1
    return f"resumed-{k}"


def build_loggers(
    cfg: Config, run_dir: Path, rank: int = 0, resume: bool = False
) -> tuple[list[Logger], list[str]]:
    """The run's loggers and human-readable notes about them (e.g. an offline fallback).

    W&B runs on rank 0 only (one W&B run per training run); the CSV logger writes from rank 0
    by itself.
    """
    loggers: list[Logger] = []
    notes: list[str] = []
    if cfg.logger.csv:
        version = csv_version(run_dir, resume)
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=version))
    mode = resolve_wandb_mode(cfg.logger.wandb.mode)
    if mode != "disabled" and rank == 0:
        run, notes = _init_wandb(cfg, run_dir, mode)
        online = run.settings.mode == "online" if hasattr(run, "settings") else False
        # log_model uploads checkpoints as artifacts; it raises for offline runs.
        loggers.append(
            WandbLogger(experiment=run, log_model=bool(cfg.logger.wandb.log_model and online))
        )
    return loggers, notes


def close_loggers(loggers: list[Logger], status: str) -> None:
    """Finalize every logger and finish the W&B run, marked failed (exit code 1) unless
    ``status`` is ``"success"``, so that a crashed or interrupted run does not stay open."""
    for logger in loggers:
        try:
            logger.finalize(status)
        finally:
            if isinstance(logger, WandbLogger):
                logger.experiment.finish(exit_code=0 if status == "success" else 1)
