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
