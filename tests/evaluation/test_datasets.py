"""Dataset loading: BEIR and FlagEmbedding-custom layouts, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bgekit.errors import DataFormatError, InputError
from bgekit.evaluation.datasets import (
    RetrievalDataset,
    detect_layout,
    find_dataset_folders,
    load_dataset,
    read_qrels_tsv,
    save_dataset,
)


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


@pytest.fixture
def beir_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "toy"
    write(
        folder / "corpus.jsonl",
        jsonl(
            [
                {"_id": "d1", "title": "Pandas", "text": "Pandas eat bamboo."},
                {"_id": "d2", "text": "Koalas eat eucalyptus."},
                {"_id": 3, "title": "", "text": "Numeric ids become strings."},
            ]
        ),
    )
    write(
        folder / "queries.jsonl",
        jsonl(
            [
                {"_id": "q1", "text": "what do pandas eat"},
                {"_id": "q2", "text": "what do koalas eat"},
                {"_id": "q3", "text": "never judged"},
            ]
        ),
    )
    write(folder / "qrels" / "test.tsv", "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t0\nq2\td2\t1\n")
    return folder


def test_beir_layout(beir_folder: Path) -> None:
    ds = load_dataset(beir_folder, "test")
    assert detect_layout(str(beir_folder), "test") == "beir"
    assert ds.name == "toy" and ds.split == "test"
    assert ds.corpus["d1"] == {"title": "Pandas", "text": "Pandas eat bamboo."}
    assert ds.corpus["d2"]["title"] == "" and "3" in ds.corpus
    assert ds.queries == {"q1": "what do pandas eat", "q2": "what do koalas eat"}  # judged queries only
    assert ds.qrels == {"q1": {"d1": 2, "d2": 0}, "q2": {"d2": 1}}  # graded, zeros kept
    assert ds.stats() == {"documents": 3, "queries": 2, "judgments": 3, "relevant": 2}


def test_qrels_without_header_and_trec_format(tmp_path: Path) -> None:
    write(tmp_path / "a.tsv", "q1\td1\t1\nq1\td2\t2\n")
    assert read_qrels_tsv(str(tmp_path / "a.tsv")) == {"q1": {"d1": 1, "d2": 2}}
    write(tmp_path / "b.txt", "q1 0 d1 1\nq2 0 d9 3\n")
    assert read_qrels_tsv(str(tmp_path / "b.txt")) == {"q1": {"d1": 1}, "q2": {"d9": 3}}
    write(tmp_path / "c.tsv", "q1\td1\t1\nq1\td2\thigh\n")
    with pytest.raises(DataFormatError, match=r"c.tsv:2: relevance 'high'"):
        read_qrels_tsv(str(tmp_path / "c.tsv"))
    write(tmp_path / "d.tsv", "q1\td1\n")
    with pytest.raises(DataFormatError, match=r"d.tsv:1: expected 3 columns"):
        read_qrels_tsv(str(tmp_path / "d.tsv"))


def test_custom_layout_round_trip(beir_folder: Path, tmp_path: Path) -> None:
    ds = load_dataset(beir_folder, "test")
    save_dataset(ds, str(tmp_path / "custom"), layout="custom")
    assert sorted(p.name for p in (tmp_path / "custom").iterdir()) == [
        "corpus.jsonl",
        "test_qrels.jsonl",
        "test_queries.jsonl",
    ]
    first = json.loads((tmp_path / "custom" / "corpus.jsonl").read_text().splitlines()[0])
    assert set(first) == {"id", "title", "text"}
    again = load_dataset(tmp_path / "custom", "test")
    assert detect_layout(str(tmp_path / "custom"), "test") == "custom"
    assert (again.corpus, again.queries, again.qrels) == (ds.corpus, ds.queries, ds.qrels)


def test_flagembedding_reads_our_custom_layout(beir_folder: Path, tmp_path: Path) -> None:
    """The custom layout we write is the one FlagEmbedding's own loader reads."""
    from FlagEmbedding.evaluation.custom import CustomEvalDataLoader

    ds = load_dataset(beir_folder, "test")
    save_dataset(ds, str(tmp_path / "custom"), layout="custom")
    loader = CustomEvalDataLoader(
        eval_name="toy", dataset_dir=str(tmp_path / "custom"), cache_dir=str(tmp_path / "hf")
    )
    assert dict(loader.load_qrels(split="test")) == ds.qrels
    assert dict(loader.load_queries(split="test")) == ds.queries


def test_malformed_jsonl_names_file_and_line(beir_folder: Path) -> None:
    with open(beir_folder / "corpus.jsonl", "a") as handle:
        handle.write('{"_id": "d4", "text": "ok"}\n{"_id": "d5", "text": \n')
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:5: invalid JSON"):
        load_dataset(beir_folder)


def test_missing_field_and_wrong_type(beir_folder: Path) -> None:
    write(beir_folder / "queries.jsonl", jsonl([{"_id": "q1", "text": "fine"}, {"_id": "q2", "body": "x"}]))
    with pytest.raises(DataFormatError, match=r"queries.jsonl:2: missing field 'text'"):
        load_dataset(beir_folder)
    write(beir_folder / "queries.jsonl", jsonl([{"_id": "q1", "text": ["not", "a", "string"]}]))
    with pytest.raises(DataFormatError, match=r"queries.jsonl:1: field 'text' is list"):
        load_dataset(beir_folder)
    write(beir_folder / "corpus.jsonl", jsonl([{"_id": "d1", "text": "a"}, {"_id": "d1", "text": "b"}]))
    with pytest.raises(DataFormatError, match=r"corpus.jsonl:2: duplicate document id 'd1'"):
        load_dataset(beir_folder)


def test_unknown_ids_in_qrels_are_counted_not_fatal(beir_folder: Path) -> None:
    with open(beir_folder / "qrels" / "test.tsv", "a") as handle:
        handle.write("ghost\td1\t1\nq2\tmissing-doc\t1\n")
    with pytest.warns(UserWarning, match="1 qrels row.*unknown queries; 1 row"):
        ds = load_dataset(beir_folder)
    assert "ghost" not in ds.qrels
    # kept as BEIR keeps it: it counts in recall's denominator
    assert ds.qrels["q2"] == {"d2": 1, "missing-doc": 1}
    assert ds.stats()["skipped_unknown_queries"] == 1 and ds.stats()["skipped_unknown_documents"] == 1


def test_empty_split_and_missing_files(beir_folder: Path, tmp_path: Path) -> None:
    write(beir_folder / "qrels" / "dev.tsv", "query-id\tcorpus-id\tscore\n")
    with pytest.raises(InputError, match="no judged queries"):
        load_dataset(beir_folder, "dev")
    with pytest.raises(DataFormatError, match=r"no qrels for split 'train' \(available: \['dev', 'test'\]\)"):
        load_dataset(beir_folder, "train")
    with pytest.raises(DataFormatError, match="dataset folder not found; expected a BEIR folder"):
        load_dataset(tmp_path / "nowhere")
    write(tmp_path / "half" / "queries.jsonl", "")
    with pytest.raises(DataFormatError, match="no corpus.jsonl; expected a BEIR folder"):
        load_dataset(tmp_path / "half")
    with pytest.raises(InputError, match="corpus is empty"):
        RetrievalDataset("x", {}, {"q": "t"}, {"q": {"d": 1}})


def test_find_dataset_folders_skips_incomplete(shared_data: Path) -> None:
    names = [Path(p).name for p in find_dataset_folders(str(shared_data))]
    assert names == ["cmrc2018-dev", "scifact", "xquad-en", "xquad-zh"]


def test_real_scifact_counts(scifact_dir: Path) -> None:
    ds = load_dataset(scifact_dir, "test")
    assert ds.stats() == {"documents": 5183, "queries": 300, "judgments": 339, "relevant": 339}
