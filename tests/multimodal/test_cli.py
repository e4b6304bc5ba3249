"""`bgekit index --images` and `bgekit search --image` on a folder of real photographs."""

from __future__ import annotations

import json
import os

from bgekit.cli.main import main
from bgekit.multimodal import MultimodalEmbedder
from bgekit.multimodal.index import MultimodalIndex


def test_index_a_photo_folder_and_search_it_by_text_and_image(tiny_clip: str, photos, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for path in photos:
        os.symlink(path, folder / os.path.basename(path))
    output = str(tmp_path / "photo-index")
    assert main(["index", "--images", "--model", tiny_clip, "--corpus", str(folder), "--output", output]) == 0
    assert "indexed 6 documents (6 images)" in capsys.readouterr().err
    index = MultimodalIndex.load(output, device="cpu")
    assert sorted(index.ids) == sorted(os.path.basename(p) for p in photos)

    assert main(["search", "--index", output, "--image", photos[2], "--top-k", "2", "--json"]) == 0
    row = json.loads(capsys.readouterr().out.strip())
    assert row["query"] == photos[2] and row["hits"][0]["id"] == "chelsea.png"
    assert abs(row["hits"][0]["score"] - 1.0) < 1e-5

    assert main(["search", "--index", output, "--query", "a cat", "at night", "--top-k", "3", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.strip().splitlines()]
    expected = index.search(["a cat", "at night"], top_k=3)
    assert [[h["id"] for h in r["hits"]] for r in rows] == [[h.id for h in hits] for hits in expected]

    composed = ["search", "--index", output, "--query", "at night", "--image", photos[0], "--json"]
    assert main(composed) == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    model = MultimodalEmbedder(tiny_clip, device="cpu")
    assert [h["id"] for h in hits] == [h.id for h in index.search("at night", images=photos[0], top_k=10)]
    assert len(model.encode_corpus(images=photos)) == 6

    assert (
        main(
            [
                "index",
                "--images",
                "--model",
                tiny_clip,
                "--corpus",
                str(folder),
                "--output",
                str(tmp_path / "x"),
                "--no-sparse",
            ]
        )
        == 2
    )
    assert "drop --no-sparse" in capsys.readouterr().err
    assert main(["search", "--index", output]) == 2
    assert "give --query, --image or both" in capsys.readouterr().err


def _photo_dataset(folder, photos) -> None:
    folder.mkdir()
    rel = [os.path.relpath(p, folder) for p in photos]
    rows = [{"_id": f"d{i}", "image": p} for i, p in enumerate(rel)]
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    queries = [{"_id": f"img{i}", "image": p} for i, p in enumerate(rel)]
    queries += [{"_id": "cat", "text": "a tabby cat"}, {"_id": "both", "text": "at night", "image": rel[2]}]
    (folder / "queries.jsonl").write_text("".join(json.dumps(q) + "\n" for q in queries))
    (folder / "qrels").mkdir()
    lines = [f"img{i}\td{i}\t1" for i in range(6)] + ["cat\td2\t1", "both\td2\t2"]
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(lines) + "\n")


def test_eval_scores_an_image_text_dataset_and_writes_the_reports(tiny_clip: str, photos, tmp_path, capsys):
    from bgekit.multimodal.evaluation import evaluate_multimodal

    dataset = tmp_path / "photos"
    _photo_dataset(dataset, photos)
    out = tmp_path / "results"
    argv = ["eval", "--model", tiny_clip, "--dataset", str(dataset), "--output-dir", str(out)]
    assert main([*argv, "--model-name", "tiny-clip", "--format", "json", "--no-progress"]) == 0
    [row] = json.loads(capsys.readouterr().out)
    assert (row["model"], row["dataset"], row["stage"]) == ("tiny-clip", "photos", "retrieval")
    assert (row["num_queries"], row["num_documents"]) == (8, 6)
    expected = evaluate_multimodal(MultimodalEmbedder(tiny_clip, device="cpu"), dataset)["scores"]
    assert set(row["scores"]) == set(expected)
    for name, value in expected.items():
        assert abs(row["scores"][name] - value) < 1e-9, name
    assert row["scores"]["recall_at_10"] == 1.0 and row["main_score"] == row["scores"]["ndcg_at_10"]
    assert expected["ndcg_at_1"] >= 6 / 8  # each photo finds itself first
    report = json.loads((out / "report.json").read_text())
    assert report["results"][0]["scores"] == row["scores"]
    assert "| tiny-clip | photos |" in (out / "report.md").read_text()
    assert (out / "recall_at_k.png").stat().st_size > 0
    [trec] = list((out / "runs").iterdir())
    lines = trec.read_text().splitlines()
    assert len(lines) == 8 * 6 and lines[0].split()[:4] == ["img0", "Q0", "d0", "1"]

    assert main([*argv, "--reranker", tiny_clip]) == 2
    assert "drop --reranker" in capsys.readouterr().err
    text = tmp_path / "text"
    text.mkdir()
    (text / "corpus.jsonl").write_text('{"_id": "d0", "text": "a"}\n')
    (text / "queries.jsonl").write_text('{"_id": "q0", "text": "a"}\n')
    (text / "qrels").mkdir()
    (text / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td0\t1\n")
    assert main(["eval", "--model", tiny_clip, "--dataset", str(dataset), str(text)]) == 2
    assert "mixes image-text datasets" in capsys.readouterr().err
