"""The output folder of a fine-tuning run: never overwritten by accident, resumed only from a complete
checkpoint, and the final model written through a staging folder renamed into place.

``transformers.Trainer`` writes into ``output_dir`` whatever it holds and, with
``--resume_from_checkpoint``, picks the highest-numbered ``checkpoint-N`` even when a crash left it
half-written. The entry points call :func:`resolve_resume` before building the trainer and
:func:`save_staged` for the final save.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

from bgekit.errors import ConfigError
from bgekit.finetune.trainer import checkpoint_folders
from bgekit.io import fsync_dir, fsync_tree, replace_folder

logger = logging.getLogger(__name__)

STAGING_DIR = ".bgekit-final-save"
"""Inside ``output_dir``: the final model is written here, then each entry is renamed into place."""
TRAINER_STATE = "trainer_state.json"
_WEIGHTS = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)


def checkpoint_problem(folder: str) -> str | None:
    """Why ``folder`` cannot be resumed from, or ``None`` when it is a complete checkpoint.

    ``Trainer`` writes a checkpoint's ``trainer_state.json`` after its weights, optimizer and RNG
    states, so a checkpoint with a readable ``trainer_state.json`` and weights is complete.

    Example:
        >>> checkpoint_problem("/nonexistent")
        'no trainer_state.json (the Trainer writes it last)'
    """
    state_path = os.path.join(folder, TRAINER_STATE)
    if not os.path.isfile(state_path):
        return f"no {TRAINER_STATE} (the Trainer writes it last)"
    try:
        with open(state_path, encoding="utf-8") as handle:
            state = json.load(handle)
    except (OSError, UnicodeDecodeError, ValueError):
        return f"{TRAINER_STATE} is not readable JSON (truncated)"
    if not isinstance(state, dict) or "global_step" not in state:
        return f"{TRAINER_STATE} has no global_step"
    names = os.listdir(folder)
    # DeepSpeed keeps the weights in global_step*/ folders
    if not any(name in _WEIGHTS or name.startswith("global_step") for name in names):
        return "no model weights (model.safetensors, pytorch_model.bin, adapter_model.*)"
    return None


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The highest-numbered complete ``checkpoint-N`` of ``output_dir``; incomplete ones are skipped
    with a warning that says why.

    Example:
        >>> last_complete_checkpoint("/nonexistent") is None
        True
    """
    for folder in reversed(checkpoint_folders(output_dir)):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        logger.warning("skipping %s, which a crash left incomplete: %s", folder, problem)
    return None


def _valuable_entries(output_dir: str) -> list[str]:
    # what a crash leaves (an incomplete checkpoint, the staging folder) is not worth keeping
    if not os.path.isdir(output_dir):
        return []
    entries = []
    for name in sorted(os.listdir(output_dir)):
        path = os.path.join(output_dir, name)
        if name == STAGING_DIR:
            continue
        if name.startswith("checkpoint-") and os.path.isdir(path) and checkpoint_problem(path) is not None:
            continue
        entries.append(name)
    return entries


def resolve_resume(output_dir: str, resume: Any, *, overwrite: bool = False) -> str | None:
    """Check ``output_dir`` before training and return the checkpoint to resume from (or ``None``).

    Args:
        output_dir: the run's ``--output_dir``.
        resume: ``--resume_from_checkpoint``: ``None``, ``"last"``/``"true"`` (the last complete
            checkpoint of ``output_dir``), or a checkpoint folder.
        overwrite: ``--overwrite_output_dir``: start afresh in a folder that holds a model or
            checkpoints.

    Raises:
        ConfigError: ``output_dir`` is not empty and nothing is resumed without ``overwrite``, or the
            checkpoint given does not exist or is incomplete.

    Example:
        >>> resolve_resume("/nonexistent/out", None) is None
        True
    """
    resumed: str | None = None
    if resume is True or (isinstance(resume, str) and resume.lower() in ("true", "last")):
        resumed = last_complete_checkpoint(output_dir)
        if resumed is None:
            logger.warning("no complete checkpoint in %s; starting from scratch", output_dir)
    elif isinstance(resume, str) and resume and resume.lower() != "false":
        if not os.path.isdir(resume):
            raise ConfigError(f"--resume_from_checkpoint {resume}: no such checkpoint folder")
        problem = checkpoint_problem(resume)
        if problem is not None:
            raise ConfigError(f"--resume_from_checkpoint {resume}: incomplete checkpoint ({problem})")
        resumed = resume
    if resumed is None and not overwrite:
        entries = _valuable_entries(output_dir)
        if entries:
            shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
            raise ConfigError(
                f"--output_dir {output_dir} is not empty (it holds {shown}); pass --overwrite_output_dir "
                "to train into it anyway, --resume_from_checkpoint last to continue its run, or choose "
                "a new folder"
            )
    return resumed


def publish_staged(stage: str, output_dir: str) -> None:
    """Flush ``stage`` to disk and rename each of its entries into ``output_dir`` (replacing entries of
    the same name), weights last; then remove ``stage``.

    A crash leaves every file of ``output_dir`` either as it was or as the new save wrote it, never
    half-written.
    """
    fsync_tree(stage)
    names = sorted(os.listdir(stage), key=lambda name: (name.endswith((".safetensors", ".bin")), name))
    for name in names:
        source, target = os.path.join(stage, name), os.path.join(output_dir, name)
        if os.path.isdir(target) and not os.path.islink(target):
            replace_folder(source, target)  # a folder cannot be renamed over a non-empty one
        else:
            os.replace(source, target)
    fsync_dir(output_dir)
    shutil.rmtree(stage, ignore_errors=True)


def save_staged(trainer: Any, write: Callable[[str], None]) -> None:
    """The final save of a run: ``write(stage)`` saves into a staging folder inside ``output_dir`` (on
    every process, as ``Trainer.save_model`` expects), and process zero renames what it wrote into place.

    Example:
        >>> save_staged(trainer, lambda folder: trainer.save_model(folder))   # doctest: +SKIP
    """
    output_dir = str(trainer.args.output_dir)
    stage = os.path.join(output_dir, STAGING_DIR)
    if trainer.is_world_process_zero():
        shutil.rmtree(stage, ignore_errors=True)  # left by a crash during an earlier final save
    trainer.accelerator.wait_for_everyone()
    write(stage)
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        publish_staged(stage, output_dir)
    trainer.accelerator.wait_for_everyone()


def prepare_output_dir(training_args: Any) -> str | None:
    """:func:`resolve_resume` for a run's ``TrainingArguments``, on every process before any of them
    writes into ``output_dir``; returns the checkpoint to resume from.

    Example:
        >>> prepare_output_dir(EmbedderTrainingArguments("out"))   # doctest: +SKIP
    """
    resumed = resolve_resume(
        str(training_args.output_dir),
        training_args.resume_from_checkpoint,
        overwrite=bool(getattr(training_args, "overwrite_output_dir", False)),
    )
    state = getattr(training_args, "distributed_state", None)
    if state is not None:
        state.wait_for_everyone()
    return resumed
