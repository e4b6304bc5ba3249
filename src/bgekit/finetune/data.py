"""Training data for embedders and rerankers: FlagEmbedding's JSONL groups, sampling and collation.

One training line is a *group*: a query, its positives and its hard negatives (FlagEmbedding's format)::

    {"query": str, "pos": [str, ...], "neg": [str, ...],
     "pos_scores": [float, ...], "neg_scores": [float, ...],   # teacher scores, for distillation
     "prompt": str, "type": str}                               # optional, as FlagEmbedding v2's examples

The public pieces, shared by embedder and reranker training (keep them stable):

- :func:`load_sources` reads files or folders into :class:`TrainingSource` objects, validating every
  line up front (errors name file and line), so a bad line never crashes a run mid-epoch.
- :func:`sample_group` draws one positive and ``train_group_size - 1`` negatives from a row
  (with repetition and a warning at load time when a row has too few negatives, as FlagEmbedding).
- :class:`GroupDataset` is a ``torch`` dataset of sampled groups; sampling is seeded by
  ``(seed, epoch, index)`` so a resumed run draws the same groups as an uninterrupted one.
- :class:`SameDatasetBatchSampler` orders indices so that every global batch comes from one dataset.
- :class:`GroupCollator` tokenizes queries and passages (pairs for rerankers) and pads them.
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset, Sampler

from bgekit.errors import ConfigError, DataFormatError
from bgekit.io import iter_jsonl

logger = logging.getLogger(__name__)

NO_IN_BATCH_NEG_SUFFIX = "no_in_batch_neg"
"""Files or folders whose name ends with this (before ``.jsonl``) train without in-batch negatives."""

SYMMETRIC_TYPES = ("symmetric_sts", "symmetric_clustering")
"""Row ``type`` values whose passages get the query instruction (symmetric tasks), as FlagEmbedding."""


@dataclass
class TrainingSource:
    """One training dataset: the validated rows of one file (or one folder's small files merged).

    Attributes:
        name: the file (or folder) it came from.
        rows: the validated rows (dicts with at least ``query``, ``pos``, ``neg``).
        no_in_batch_neg: train this dataset's batches without in-batch negatives.
        batch_size: per-dataset batch size from the rows' ``batch_size`` field (``None``: the default).
        train_group_size: per-dataset group size from the rows' ``train_group_size`` or ``type`` field.
    """

    name: str
    rows: list[dict[str, Any]]
    no_in_batch_neg: bool = False
    batch_size: int | None = None
    train_group_size: int | None = None


@dataclass
class Group:
    """One sampled training group: a query, ``[positive, negative, ...]`` and optional teacher scores.

    Example:
        >>> g = sample_group({"query": "q", "pos": ["p"], "neg": ["n1", "n2"]}, 2, random.Random(0))
        >>> g.query, len(g.passages)
        ('q', 2)
    """

    query: str
    passages: list[str]
    teacher_scores: list[float] | None = None
    source: int = 0


def _check_strings(value: Any, field_name: str, path: str, line: int, *, allow_empty: bool) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataFormatError(f"field {field_name!r} must be a list of strings", path, line)
    if not value and not allow_empty:
        raise DataFormatError(f"field {field_name!r} is empty; at least one passage is needed", path, line)
    return value


def _check_scores(row: dict[str, Any], name: str, texts: str, path: str, line: int) -> None:
    scores = row.get(name)
    if not isinstance(scores, list) or not all(
        isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores
    ):
        raise DataFormatError(
            f"field {name!r} must be a list of numbers (needed by knowledge distillation)", path, line
        )
    # Python's json reads the NaN and Infinity literals; one such score turns the distillation loss into NaN
    bad = [i for i, s in enumerate(scores) if not math.isfinite(s)]
    if bad:
        raise DataFormatError(
            f"field {name!r} holds {scores[bad[0]]!r} at index {bad[0]}; teacher scores must be finite numbers",
            path,
            line,
        )
    if len(scores) != len(row[texts]):
        raise DataFormatError(
            f"field {name!r} has {len(scores)} scores but {texts!r} has {len(row[texts])} passages",
            path,
            line,
        )


def validate_row(row: Any, path: str, line: int, *, knowledge_distillation: bool = False) -> dict[str, Any]:
    """Check one training line; return it (``neg`` defaults to ``[]``) or raise naming file and line.

    Example:
        >>> validate_row({"query": "q", "pos": ["p"]}, "train.jsonl", 1)["neg"]
        []
    """
    if not isinstance(row, dict):
        raise DataFormatError("expected a JSON object with 'query', 'pos' and 'neg'", path, line)
    if "query" not in row:
        raise DataFormatError("missing field 'query'", path, line)
    if not isinstance(row["query"], str):
        raise DataFormatError("field 'query' must be a string", path, line)
    if "pos" not in row:
        raise DataFormatError("missing field 'pos'", path, line)
    _check_strings(row["pos"], "pos", path, line, allow_empty=False)
    row["neg"] = _check_strings(row.get("neg", []), "neg", path, line, allow_empty=True)
    if "prompt" in row and row["prompt"] is not None and not isinstance(row["prompt"], str):
        raise DataFormatError("field 'prompt' must be a string", path, line)
    if knowledge_distillation:
        _check_scores(row, "pos_scores", "pos", path, line)
        _check_scores(row, "neg_scores", "neg", path, line)
    else:
        row.pop("pos_scores", None)
        row.pop("neg_scores", None)
    return row


def _group_size_of(rows: list[dict[str, Any]], default: int) -> int | None:
    first = rows[0]
    kind = first.get("type")
    if kind == "only_1neg":
        return 2
    if kind == "symmetric_class":
        return min(len(first["neg"]) + 1, default)
    size = first.get("train_group_size")
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        return size
    return None


def read_source(
    path: str,
    *,
    knowledge_distillation: bool = False,
    train_group_size: int = 8,
    max_examples: int | None = None,
    seed: int = 42,
    no_in_batch_neg: bool | None = None,
) -> TrainingSource:
    """Read and validate one JSONL file into a :class:`TrainingSource`.

    Rows with fewer than ``group_size - 1`` negatives are allowed (negatives are then drawn with
    repetition, as FlagEmbedding); a warning says how many there are. A row with no negative at all
    while the group needs some is an error naming the line, since nothing could be sampled.

    Example:
        >>> src = read_source("train.jsonl", train_group_size=4)   # doctest: +SKIP
    """
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    for line_no, row in iter_jsonl(path):
        rows.append(validate_row(row, path, line_no, knowledge_distillation=knowledge_distillation))
        lines.append(line_no)
    if max_examples is not None and len(rows) > max_examples:
        keep = sorted(random.Random(seed).sample(range(len(rows)), max_examples))
        rows, lines = [rows[i] for i in keep], [lines[i] for i in keep]
    if no_in_batch_neg is None:
        stem = os.path.basename(path).rsplit(".", 1)[0]
        no_in_batch_neg = stem.endswith(NO_IN_BATCH_NEG_SUFFIX)
    group_size = _group_size_of(rows, train_group_size) if rows else None
    need = (group_size or train_group_size) - 1
    short = 0
    for row, line_no in zip(rows, lines, strict=True):
        if need > 0 and not row["neg"]:
            raise DataFormatError(
                f"field 'neg' is empty but train_group_size needs {need} negatives", path, line_no
            )
        short += len(row["neg"]) < need
    if short:
        logger.warning(
            "%s: %d of %d rows have fewer than %d negatives; their negatives are sampled with repetition",
            path,
            short,
            len(rows),
            need,
        )
    batch_size = rows[0].get("batch_size") if rows else None
    if not (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0):
        batch_size = None
    return TrainingSource(path, rows, bool(no_in_batch_neg), batch_size, group_size)


def load_sources(
    paths: str | Sequence[str],
    *,
    knowledge_distillation: bool = False,
    train_group_size: int = 8,
    max_examples_per_dataset: int | None = None,
    seed: int = 42,
) -> list[TrainingSource]:
    """Read training files and folders (every ``*.json``/``*.jsonl`` inside, sorted) into sources.

    A folder whose name ends with ``no_in_batch_neg`` marks all its files as trained without in-batch
    negatives; so does a file whose name (before the extension) ends with it.

    Example:
        >>> sources = load_sources(["data/msmarco.jsonl", "data/nli_no_in_batch_neg/"])   # doctest: +SKIP
    """
    if isinstance(paths, str):
        paths = [paths]
    if not paths:
        raise ConfigError("train_data is empty; give at least one JSONL file or folder")
    sources: list[TrainingSource] = []
    for path in paths:
        kwargs = dict(
            knowledge_distillation=knowledge_distillation,
            train_group_size=train_group_size,
            max_examples=max_examples_per_dataset,
            seed=seed,
        )
        if os.path.isdir(path):
            flag = os.path.basename(os.path.normpath(path)).endswith(NO_IN_BATCH_NEG_SUFFIX)
            files = sorted(f for f in os.listdir(path) if f.endswith((".json", ".jsonl")))
            if not files:
                raise DataFormatError("folder holds no .json or .jsonl file", path)
            for name in files:
                source = read_source(os.path.join(path, name), no_in_batch_neg=flag or None, **kwargs)  # type: ignore[arg-type]
                if source.rows:
                    sources.append(source)
        elif os.path.isfile(path):
            source = read_source(path, **kwargs)  # type: ignore[arg-type]
            if source.rows:
                sources.append(source)
        else:
            raise DataFormatError("training data not found (expected a .jsonl file or a folder)", path)
    if not sources:
        raise DataFormatError("no training rows found", ", ".join(paths))
    return sources


def shuffle_text(text: str, ratio: float, rng: random.Random) -> str:
    """With probability ``ratio``, cut a text longer than 100 characters in three and shuffle the parts.

    FlagEmbedding's ``shuffle_ratio`` augmentation of positives.
    """
    if ratio > 0 and len(text) > 100 and rng.random() < ratio:
        size = len(text) // 3 + 1
        parts = [text[i : i + size] for i in range(0, len(text), size)]
        rng.shuffle(parts)
        return " ".join(parts)
    return text


def format_instruction(text: str, instruction: str | None, fmt: str) -> str:
    """``fmt.format(instruction, text)``, or the text unchanged when there is no instruction."""
    return text if instruction is None else fmt.format(instruction, text)


def sample_group(
    row: dict[str, Any],
    train_group_size: int,
    rng: random.Random,
    *,
    knowledge_distillation: bool = False,
    shuffle_ratio: float = 0.0,
    query_instruction: str | None = None,
    query_instruction_format: str = "{}{}",
    passage_instruction: str | None = None,
    passage_instruction_format: str = "{}{}",
    source: int = 0,
) -> Group:
    """Draw one positive and ``train_group_size - 1`` negatives from a validated row.

    Negatives are drawn without repetition when the row has enough, otherwise from the negatives
    repeated ``ceil(needed / available)`` times (FlagEmbedding's rule). A row's ``prompt`` replaces the
    query instruction; rows of a symmetric ``type`` give passages the query instruction too.

    Returns:
        a :class:`Group` whose ``passages[0]`` is the positive; ``teacher_scores`` follow the same order
        when ``knowledge_distillation`` is on.

    Example:
        >>> row = {"query": "q", "pos": ["p"], "neg": ["n1"], "pos_scores": [1.0], "neg_scores": [0.5]}
        >>> g = sample_group(row, 3, random.Random(0), knowledge_distillation=True)
        >>> g.passages, g.teacher_scores
        (['p', 'n1', 'n1'], [1.0, 0.5, 0.5])
    """
    instruction = row.get("prompt") or query_instruction
    query = format_instruction(row["query"], instruction, query_instruction_format)
    pos_idx = rng.randrange(len(row["pos"]))
    passages = [shuffle_text(row["pos"][pos_idx], shuffle_ratio, rng)]
    need = train_group_size - 1
    negatives: list[str] = row["neg"]
    if need <= 0:
        neg_idxs: list[int] = []
    elif len(negatives) < need:
        repeats = math.ceil(need / len(negatives))
        neg_idxs = rng.sample(list(range(len(negatives))) * repeats, need)
    else:
        neg_idxs = rng.sample(range(len(negatives)), need)
    passages.extend(negatives[i] for i in neg_idxs)
    scores: list[float] | None = None
    if knowledge_distillation:
        scores = [float(row["pos_scores"][pos_idx])] + [float(row["neg_scores"][i]) for i in neg_idxs]
    if row.get("type") in SYMMETRIC_TYPES:
        passages = [format_instruction(p, instruction, query_instruction_format) for p in passages]
    else:
        passages = [format_instruction(p, passage_instruction, passage_instruction_format) for p in passages]
    return Group(query, passages, scores, source)


@dataclass
class SamplingOptions:
    """How :class:`GroupDataset` turns rows into groups (the data arguments that matter for sampling)."""

    train_group_size: int = 8
    knowledge_distillation: bool = False
    shuffle_ratio: float = 0.0
    query_instruction: str | None = None
    query_instruction_format: str = "{}{}"
    passage_instruction: str | None = None
    passage_instruction_format: str = "{}{}"
    seed: int = 42

    def __post_init__(self) -> None:
        if self.train_group_size < 1:
            raise ConfigError(f"train_group_size={self.train_group_size} must be at least 1")
        if not 0.0 <= self.shuffle_ratio <= 1.0:
            raise ConfigError(f"shuffle_ratio={self.shuffle_ratio} must be between 0 and 1")


class GroupDataset(Dataset[Group]):
    """All sources' rows as one index space; item ``i`` is a freshly sampled :class:`Group`.

    Sampling uses a generator seeded by ``(seed, epoch, i)``: the same epoch always yields the same
    groups, whatever the data-loader workers or resumption, and a new epoch draws new negatives.
    Call :meth:`set_epoch` at each epoch (the HF ``Trainer`` does, through its data loader).

    Example:
        >>> ds = GroupDataset(load_sources("train.jsonl"), SamplingOptions(train_group_size=4))  # doctest: +SKIP
        >>> ds[0].passages[0]   # the positive   # doctest: +SKIP
    """

    def __init__(self, sources: list[TrainingSource], options: SamplingOptions) -> None:
        self.sources = sources
        self.options = options
        self.epoch = 0
        self.offsets: list[int] = []
        total = 0
        for source in sources:
            self.offsets.append(total)
            total += len(source.rows)
        self.total = total
        self._source_of = [s for s, src in enumerate(sources) for _ in src.rows]

    def __len__(self) -> int:
        return self.total

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def locate(self, index: int) -> tuple[int, dict[str, Any]]:
        """The source number and row of global index ``index``."""
        source = self._source_of[index]
        return source, self.sources[source].rows[index - self.offsets[source]]

    def group_size_of(self, source: int) -> int:
        return self.sources[source].train_group_size or self.options.train_group_size

    def __getitem__(self, index: int) -> Group:
        source, row = self.locate(index)
        o = self.options
        rng = random.Random(f"{o.seed}:{self.epoch}:{index}")
        return sample_group(
            row,
            self.group_size_of(source),
            rng,
            knowledge_distillation=o.knowledge_distillation,
            shuffle_ratio=o.shuffle_ratio,
            query_instruction=o.query_instruction,
            query_instruction_format=o.query_instruction_format,
            passage_instruction=o.passage_instruction,
            passage_instruction_format=o.passage_instruction_format,
            source=source,
        )


class SameDatasetBatchSampler(Sampler[int]):
    """Yield indices so that each run of ``global_batch_size`` consecutive indices is from one source.

    Per epoch: shuffle each source's indices, cut them into full global batches (an incomplete last
    batch is dropped, as FlagEmbedding), shuffle the batches and concatenate. A data loader batching by
    ``per_device_batch_size`` then gives every process of a step a batch from the same source.

    Example:
        >>> list(SameDatasetBatchSampler([3, 2], global_batch_size=2, seed=0))   # doctest: +SKIP
    """

    def __init__(self, source_sizes: Sequence[int], global_batch_size: int, seed: int = 42) -> None:
        if global_batch_size < 1:
            raise ConfigError(f"batch size {global_batch_size} must be at least 1")
        self.source_sizes = list(source_sizes)
        self.global_batch_size = global_batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def batches(self) -> list[list[int]]:
        rng = random.Random(f"{self.seed}:{self.epoch}")
        out: list[list[int]] = []
        offset = 0
        for size in self.source_sizes:
            idx = list(range(offset, offset + size))
            rng.shuffle(idx)
            for start in range(0, size - self.global_batch_size + 1, self.global_batch_size):
                out.append(idx[start : start + self.global_batch_size])
            offset += size
        rng.shuffle(out)
        return out

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch

    def __len__(self) -> int:
        return sum(size // self.global_batch_size for size in self.source_sizes) * self.global_batch_size


@dataclass
class GroupCollator:
    """Tokenize a list of groups into padded query and passage batches.

    Returns a dict with ``queries`` and ``passages`` (``input_ids``/``attention_mask``... tensors;
    passages are ordered group by group, the positive first), ``teacher_scores`` (a float tensor of
    shape (batch, group) or ``None``) and ``no_in_batch_neg`` (bool). With ``pairs=True`` (rerankers)
    it instead returns ``pairs``: the tokenized (query, passage) pairs in the same order.
    ``token_type_ids=False`` leaves segment ids out (decoder-only models do not take them).

    Example:
        >>> collate = GroupCollator(tokenizer, query_max_len=32, passage_max_len=128)   # doctest: +SKIP
        >>> batch = collate([dataset[0], dataset[1]])   # doctest: +SKIP
    """

    tokenizer: Any
    query_max_len: int = 32
    passage_max_len: int = 128
    pad_to_multiple_of: int | None = None
    pairs: bool = False
    pair_max_len: int = 512
    no_in_batch_neg_sources: set[int] = field(default_factory=set)
    token_type_ids: bool = True

    def _pad(self, texts: Any, max_len: int) -> dict[str, torch.Tensor]:
        encoded = self.tokenizer(
            texts,
            truncation=True,
            max_length=max_len,
            padding=True,
            pad_to_multiple_of=self.pad_to_multiple_of,
            return_tensors="pt",
        )
        if not self.token_type_ids:
            encoded.pop("token_type_ids", None)  # decoders take no segment ids
        return dict(encoded)

    def __call__(self, groups: list[Group]) -> dict[str, Any]:
        sizes = {len(g.passages) for g in groups}
        if len(sizes) != 1:
            raise ConfigError(
                f"groups of different sizes {sorted(sizes)} in one batch; use same_dataset_within_batch "
                "when datasets set their own train_group_size"
            )
        passages = [p for g in groups for p in g.passages]
        batch: dict[str, Any] = {}
        if self.pairs:
            pairs = [[g.query, p] for g in groups for p in g.passages]
            batch["pairs"] = self._pad(pairs, self.pair_max_len)
        else:
            batch["queries"] = self._pad([g.query for g in groups], self.query_max_len)
            batch["passages"] = self._pad(passages, self.passage_max_len)
        if groups[0].teacher_scores is not None:
            batch["teacher_scores"] = torch.tensor([g.teacher_scores for g in groups], dtype=torch.float32)
        else:
            batch["teacher_scores"] = None
        batch["no_in_batch_neg"] = any(g.source in self.no_in_batch_neg_sources for g in groups)
        return batch


def no_in_batch_neg_sources(sources: list[TrainingSource]) -> set[int]:
    """Indices of the sources trained without in-batch negatives (for :class:`GroupCollator`)."""
    return {i for i, s in enumerate(sources) if s.no_in_batch_neg}
