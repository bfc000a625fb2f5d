"""A training run's folder: locked for the run's life, never silently replaced, restartable after a kill at any
moment, and not left behind by a start that failed before writing anything."""

import shutil
from dataclasses import replace
from pathlib import Path

import yaml

from ramstrans.config import Config, config_diff, config_from_dict
from ramstrans.errors import ConfigError, UsageError
from ramstrans.runtime.dist import DistInfo, broadcast_object
from ramstrans.runtime.files import FileLock

__all__ = ["RUN_LOCK", "prepare_folder", "remove_if_unused", "first_missing"]

RUN_LOCK = ".lock"  # held by the training process for the run's life


def _unfinished_differences(out_dir: Path, files: list[Path], cfg: Config) -> list[str] | None:
    """For a folder without a checkpoint: the config keys its run differs in from ``cfg`` (empty: the same run,
    killed before its first checkpoint); None when the folder holds a checkpoint or files of no run."""
    if any(p.name.startswith("checkpoint") and p.suffix == ".pth" for p in files):
        return None
    stored = out_dir / "config.yaml"
    if not stored.is_file():
        return [] if all(p.name.startswith(("metrics", ".")) for p in files) else None
    try:
        old = config_from_dict(yaml.safe_load(stored.read_text(encoding="utf-8")))
    except (ConfigError, yaml.YAMLError, UnicodeDecodeError):
        return None
    here = replace(cfg, train=replace(cfg.train, output_dir=old.train.output_dir))
    return sorted(config_diff(old, here))


def prepare_folder(
    out_dir: Path, resume_from: Path | None, overwrite: bool, info: DistInfo, restart: Config | None = None
) -> tuple[bool, FileLock | None]:
    """Lock the run folder for this run's life (rank 0) and make sure it holds no other run; remove the temp files of
    writes a killed process left. Returns (whether the run continues in its own folder, the lock).

    Args:
        out_dir: the run folder.
        resume_from: the checkpoint a resume continues, or None.
        overwrite: replace another run's files.
        info: the process's place in a distributed job.
        restart: with ``--resume auto`` that found no checkpoint, the run's config: a folder whose run of the same
            config died before its first checkpoint (config and logs only) is cleared and the run starts again.

    Raises:
        UsageError: another process holds the folder (the lock's sentence, on every rank), or it holds files of
            another run and ``overwrite`` is off.
    """
    same = resume_from is not None and out_dir.resolve() == resume_from.parent.resolve()
    error, lock = None, None
    if info.is_main:
        try:
            lock = FileLock(out_dir / RUN_LOCK, f"run folder {out_dir}").acquire()
            files = [p for p in out_dir.iterdir() if p.name != RUN_LOCK]
            differs = _unfinished_differences(out_dir, files, restart) if files and restart is not None else None
            if files and not same and not overwrite and differs != []:
                hint = (
                    f"it holds an unfinished run of another config (it differs in {', '.join(differs[:4])}); "
                    if differs
                    else ""
                )
                raise UsageError(
                    f"run folder {out_dir} already holds a run; {hint}continue it with --resume auto, "
                    "choose another --output-dir, or replace it with --overwrite"
                )
            for p in files:
                if not same or (p.name.startswith(".") and p.name.endswith(".tmp")):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        except ValueError as e:
            if lock is not None:
                lock.release()
            error = str(e)
    shared = broadcast_object(error)  # every rank stops with rank 0's sentence instead of waiting for it
    if shared:
        raise UsageError(str(shared))
    return same, lock


def first_missing(out_dir: Path) -> Path | None:
    """The outermost folder of ``out_dir``'s path that does not exist yet (what a run would create), or None."""
    missing = None
    for folder in (out_dir, *out_dir.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def remove_if_unused(out_dir: Path, created: Path | None) -> None:
    """After a start that failed before writing anything (the run folder holds nothing but its lock file), remove
    the folders the run created: ``out_dir`` and its parents up to ``created``."""
    if created is None or not out_dir.is_dir() or any(p.name != RUN_LOCK for p in out_dir.iterdir()):
        return
    shutil.rmtree(out_dir, ignore_errors=True)
    for folder in out_dir.parents:
        if folder == created.parent or any(folder.iterdir()):
            break
        folder.rmdir()
