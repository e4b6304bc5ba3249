"""What the embedder and reranker fine-tuning entry points share: the command line, the run, the save.

``python -m bgekit.finetune.embedder`` and ``python -m bgekit.finetune.reranker`` differ only in their
argument dataclasses, how they build their trainer and what they write at the end; parsing (ours plus
every ``TrainingArguments`` option), resuming, the staged final save and the error exit live here.

Example:
    >>> from bgekit.finetune.arguments import DataArguments, ModelArguments, EmbedderTrainingArguments
    >>> classes = (ModelArguments, DataArguments, EmbedderTrainingArguments)
    >>> parse_args(classes, ["--model_name_or_path", "m", "--train_data", "t.jsonl",
    ...                      "--output_dir", "out"])[0].model_name_or_path
    'm'
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

_Trainer = TypeVar("_Trainer")


def parse_args(classes: Sequence[type], argv: list[str] | None = None) -> tuple[Any, ...]:
    """Parse command-line arguments into one instance of each of ``classes`` (HF dataclasses)."""
    from transformers import HfArgumentParser

    parser = HfArgumentParser(tuple(classes))  # type: ignore[arg-type]
    return tuple(parser.parse_args_into_dataclasses(args=argv))


def train_and_save(
    training_args: Any, build: Callable[[], _Trainer], write: Callable[[_Trainer, str], None]
) -> _Trainer:
    """Train the trainer ``build()`` returns, resuming where ``training_args`` asks, then save it.

    Resumes from ``training_args.resume_from_checkpoint`` when given (a folder, or ``"last"``/``"true"``
    for the last complete checkpoint in ``output_dir``); a non-empty ``output_dir`` is refused otherwise,
    unless ``overwrite_output_dir``. ``write(trainer, folder)`` writes the final model into a staging
    folder, which is renamed into place with the trainer state beside it (``bgekit.finetune.output``).
    """
    from bgekit.finetune.output import prepare_output_dir, save_staged

    resume = prepare_output_dir(training_args)
    trainer: Any = build()
    trainer.train(resume_from_checkpoint=resume)

    def write_final(folder: str) -> None:
        write(trainer, folder)
        if trainer.is_world_process_zero():
            trainer.state.save_to_json(os.path.join(folder, "trainer_state.json"))

    save_staged(trainer, write_final)
    return trainer


def save_merged_lora(trainer: Any, folder: str, section: str) -> None:
    """Merge the trained LoRA adapters into the base weights and save them, the tokenizer and the
    ``section`` settings of ``bgekit.json`` to ``folder`` (call it on the first process only)."""
    from bgekit.models.settings import write_saved_settings

    model = trainer.accelerator.unwrap_model(trainer.model)
    merged = model.merge_and_unload()
    merged.save_pretrained(folder, safe_serialization=True)
    if trainer.processing_class is not None:
        trainer.processing_class.save_pretrained(folder)
    write_saved_settings(folder, section, trainer.saved_settings)


def main(
    name: str,
    parse: Callable[[list[str] | None], tuple[Any, ...]],
    train: Callable[..., Any],
    argv: list[str] | None,
) -> int:
    """Run ``train(*parse(argv))``; a bgekit error is printed as ``bgekit finetune {name}: error: ...``
    and exits 2. Logs at INFO on the first process of a distributed run, WARNING on the others."""
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if int(os.environ.get("LOCAL_RANK", "0")) <= 0 else logging.WARNING,
    )
    from bgekit.errors import BgekitError

    try:
        train(*parse(argv))
    except BgekitError as exc:
        print(f"bgekit finetune {name}: error: {exc}", file=sys.stderr)
        return 2
    return 0
