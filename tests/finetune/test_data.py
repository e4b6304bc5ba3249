"""Training data: validation errors naming file and line, group sampling, batching by dataset."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest
import torch

from bgekit.errors import DataFormatError
from bgekit.finetune.data import (
    GroupCollator,
    GroupDataset,
    SameDatasetBatchSampler,
    SamplingOptions,
    load_sources,
    sample_group,
)


def write(path: Path, rows: list[object]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


ROW = {
    "query": "q",
    "pos": ["p1", "p2"],
    "neg": ["n1", "n2", "n3"],
    "pos_scores": [3.0, 2.0],
    "neg_scores": [1, 0, -1],
}


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ({"pos": ["p"], "neg": []}, "missing field 'query'"),
        ({"query": "q", "neg": ["n"]}, "missing field 'pos'"),
        ({"query": "q", "pos": [], "neg": ["n"]}, "'pos' is empty"),
        ({"query": "q", "pos": "p", "neg": ["n"]}, "'pos' must be a list of strings"),
        ({"query": 3, "pos": ["p"], "neg": ["n"]}, "'query' must be a string"),
        ({"query": "q", "pos": ["p"], "neg": []}, "'neg' is empty but train_group_size needs 3"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path: Path, row: dict, message: str) -> None:
    path = write(tmp_path / "train.jsonl", [ROW, row])
    with pytest.raises(DataFormatError, match=message) as info:
        load_sources(path, train_group_size=4)
    assert f"{path}:2:" in str(info.value)


def test_teacher_scores_of_wrong_length_name_the_line(tmp_path: Path) -> None:
    bad = dict(ROW, neg_scores=[1.0])
    path = write(tmp_path / "kd.jsonl", [ROW, ROW, bad])
    with pytest.raises(DataFormatError, match=r"kd.jsonl:3: field 'neg_scores' has 1 scores but 'neg' has 3"):
        load_sources(path, knowledge_distillation=True)
    # without distillation the scores are ignored
    assert len(load_sources(path)[0].rows) == 3


@pytest.mark.parametrize(("field", "literal"), [("pos_scores", "NaN"), ("neg_scores", "-Infinity")])
def test_non_finite_teacher_scores_name_the_line(tmp_path: Path, field: str, literal: str) -> None:
    # json.dumps writes NaN/Infinity literals and json.loads reads them back: what a broken teacher leaves
    bad = dict(ROW, **{field: [float(literal.replace("Infinity", "inf"))] + ROW[field][1:]})
    path = write(tmp_path / "kd.jsonl", [ROW, bad])
    assert literal in Path(path).read_text(encoding="utf-8")
    with pytest.raises(DataFormatError, match=rf"kd.jsonl:2: field '{field}' holds .* at index 0; .* finite"):
        load_sources(path, knowledge_distillation=True)


def test_few_negatives_sampled_with_repetition_and_warned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = write(tmp_path / "short.jsonl", [{"query": "q", "pos": ["p"], "neg": ["n1", "n2"]}])
    with caplog.at_level(logging.WARNING):
        sources = load_sources(path, train_group_size=6)
    assert "fewer than 5 negatives" in caplog.text
    group = GroupDataset(sources, SamplingOptions(train_group_size=6))[0]
    assert group.passages[0] == "p" and len(group.passages) == 6
    assert sorted(set(group.passages[1:])) == ["n1", "n2"]


def test_sample_group_keeps_teacher_scores_aligned() -> None:
    for seed in range(20):
        g = sample_group(ROW, 3, random.Random(seed), knowledge_distillation=True)
        score_of = {"p1": 3.0, "p2": 2.0, "n1": 1.0, "n2": 0.0, "n3": -1.0}
        assert g.teacher_scores == [score_of[p] for p in g.passages]
        assert g.passages[0] in ("p1", "p2") and len(set(g.passages[1:])) == 2


def test_instructions_prompts_and_symmetric_types() -> None:
    rng = random.Random(0)
    g = sample_group(ROW, 2, rng, query_instruction="Q: ", passage_instruction="P: ")
    assert g.query == "Q: q" and all(p.startswith("P: ") for p in g.passages)
    g = sample_group(dict(ROW, prompt="Find: "), 2, rng, query_instruction="Q: ")
    assert g.query == "Find: q"
    g = sample_group(dict(ROW, prompt="Same: ", type="symmetric_sts"), 2, rng, passage_instruction="P: ")
    assert all(p.startswith("Same: ") for p in g.passages)
    g = sample_group(ROW, 2, rng, query_instruction="x", query_instruction_format="<{}>{}")
    assert g.query == "<x>q"


def test_sampling_is_seeded_by_epoch_and_index(tmp_path: Path) -> None:
    rows = [{"query": f"q{i}", "pos": ["p"], "neg": [f"n{j}" for j in range(20)]} for i in range(4)]
    ds = GroupDataset(load_sources(write(tmp_path / "t.jsonl", rows)), SamplingOptions(train_group_size=4))
    first = [ds[i].passages for i in range(4)]
    assert first == [ds[i].passages for i in range(4)]
    ds.set_epoch(1)
    assert first != [ds[i].passages for i in range(4)]


def test_folders_flags_and_same_dataset_batches(tmp_path: Path) -> None:
    folder = tmp_path / "nli_no_in_batch_neg"
    folder.mkdir()
    write(folder / "a.jsonl", [{"query": f"a{i}", "pos": ["p"], "neg": ["n"]} for i in range(5)])
    other = write(tmp_path / "b.jsonl", [{"query": f"b{i}", "pos": ["p"], "neg": ["n"]} for i in range(4)])
    sources = load_sources([str(folder), other], train_group_size=2)
    assert [s.no_in_batch_neg for s in sources] == [True, False]
    sampler = SameDatasetBatchSampler([len(s.rows) for s in sources], global_batch_size=2, seed=1)
    order = list(sampler)
    assert len(order) == len(sampler) == 8  # 2 full batches of a (one row dropped), 2 of b
    for start in range(0, len(order), 2):
        assert len({i < 5 for i in order[start : start + 2]}) == 1


def test_collator_shapes_and_flags(tmp_path: Path, minilm_tokenizer_dir: str) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_tokenizer_dir)
    sources = load_sources(write(tmp_path / "kd.jsonl", [ROW, ROW, ROW]), knowledge_distillation=True)
    ds = GroupDataset(sources, SamplingOptions(train_group_size=3, knowledge_distillation=True))
    batch = GroupCollator(tok, query_max_len=8, passage_max_len=16, pad_to_multiple_of=8)([ds[0], ds[1]])
    assert batch["queries"]["input_ids"].shape[0] == 2
    assert batch["passages"]["input_ids"].shape[0] == 6
    assert batch["passages"]["input_ids"].shape[1] % 8 == 0
    assert batch["teacher_scores"].shape == (2, 3) and batch["teacher_scores"].dtype == torch.float32
    assert batch["no_in_batch_neg"] is False


def test_flagembedding_example_folder_loads(shared_data: Path) -> None:
    folder = shared_data / "finetune" / "flagembedding-examples"
    sources = load_sources([str(folder)], train_group_size=8)
    assert sum(len(s.rows) for s in sources) >= 60
    kd = load_sources([str(folder / "embedder_retrieval_msmarco.jsonl")], knowledge_distillation=True)
    assert "neg_scores" in kd[0].rows[0]
