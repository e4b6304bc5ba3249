"""Run under ``torchrun --nproc_per_node 2``: cross-device loss and DDP gradients on a fixed global batch.

Each process takes its shard of the global batch, computes the trainer's loss with
``--negatives_cross_device`` through a DDP-wrapped tiny model, and backpropagates; process 0 saves the
loss and the (DDP-averaged) gradients for the test to compare with one process on the whole batch.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from transformers import AutoModel, AutoTokenizer

from bgekit.finetune.trainer import EmbedderTrainer
from bgekit.inference.heads import pool

QUERIES = ["what is apple?", "banana facts", "cherry trees grow", "delta rivers"]
PASSAGES = [
    f"passage {i} about {w}"
    for i, w in enumerate(["apple", "pear", "banana", "kiwi", "cherry", "plum", "delta", "sea"])
]
TEACHER = [[3.0, 1.0], [2.0, 0.5], [1.0, 1.5], [0.0, -1.0]]


def loss_and_grads(model, tokenizer, queries, passages, teacher, cross_device):  # type: ignore[no-untyped-def]
    fake = SimpleNamespace(
        args=SimpleNamespace(
            negatives_cross_device=cross_device, temperature=0.05, kd_loss_type="kl_div", use_mrl=False
        ),
        normalize=True,
    )
    qf = tokenizer(queries, padding=True, return_tensors="pt")
    pf = tokenizer(passages, padding=True, return_tensors="pt")
    q = pool(model(**qf).last_hidden_state, qf["attention_mask"], "mean")
    p = pool(model(**pf).last_hidden_state, pf["attention_mask"], "mean")
    t = None if teacher is None else torch.tensor(teacher)
    loss = EmbedderTrainer.loss_from_embeddings(fake, q, p, t)  # type: ignore[arg-type]
    loss.backward()
    return loss.detach()


def main(folder: str, out: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder)
    for name, param in model.named_parameters():
        if name.startswith("pooler."):
            param.requires_grad_(False)
    ddp = DistributedDataParallel(model, find_unused_parameters=False)
    per = len(QUERIES) // world
    results = {}
    for label, teacher in (("plain", None), ("kd", TEACHER)):
        ddp.zero_grad()
        shard_t = None if teacher is None else teacher[rank * per : (rank + 1) * per]
        loss = loss_and_grads(
            ddp, tokenizer, QUERIES[rank * per : (rank + 1) * per],
            PASSAGES[rank * per * 2 : (rank + 1) * per * 2], shard_t, True,
        )  # fmt: skip
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[label] = {"loss": float(loss), "grads": grads}
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
