"""Fine-tune an embedder (or a reranker): bgekit finetune embedder|reranker --model_name_or_path ... .

Everything after the target is passed to ``python -m bgekit.finetune.<target>``: its own options
(``--train_data``, ``--train_group_size``, ``--temperature``, ...) and any HF ``TrainingArguments``.
For several processes, run ``torchrun --nproc_per_node N -m bgekit.finetune.embedder ...`` instead.
"""

from __future__ import annotations

import argparse
import importlib

TARGETS = {"embedder": "bgekit.finetune.embedder", "reranker": "bgekit.finetune.reranker"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", choices=sorted(TARGETS), help="what to fine-tune")
    parser.add_argument("training_args", nargs=argparse.REMAINDER, help="options of the training entry point")


def run(args: argparse.Namespace) -> int:
    module = importlib.import_module(TARGETS[args.target])
    return int(module.main(list(args.training_args)) or 0)
