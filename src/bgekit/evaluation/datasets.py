"""Retrieval datasets: loading BEIR and FlagEmbedding-custom folders, and checking what was loaded.

Two on-disk layouts are read:

* BEIR: ``corpus.jsonl`` (``{"_id", "title", "text"}``), ``queries.jsonl`` (``{"_id", "text"}``) and
  ``qrels/<split>.tsv`` (``query-id corpus-id score``, with or without a header line).
* FlagEmbedding's custom layout: ``corpus.jsonl`` (``{"id", "title", "text"}``),
  ``<split>_queries.jsonl`` (``{"id", "text"}``) and ``<split>_qrels.jsonl``
  (``{"qid", "docid", "relevance"}``).

As BEIR and MTEB do, only queries that have judgments in the split are evaluated; qrels rows that name
an unknown query or document are counted and reported with a warning, not an error (rows naming an
unknown query are dropped; rows naming a document missing from the corpus are kept, as BEIR keeps them).
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from bgekit.errors import DataFormatError, InputError
from bgekit.io import iter_jsonl, iter_text_lines, read_corpus, read_queries, string_field

logger = logging.getLogger(__name__)

Layout = Literal["beir", "custom"]

BEIR_LAYOUT_HELP = (
    "expected a BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv) or FlagEmbedding's custom "
    "layout (corpus.jsonl, <split>_queries.jsonl, <split>_qrels.jsonl)"
)


@dataclass
class RetrievalDataset:
    """A corpus, the queries of one split and their graded relevance judgments.

    Args:
        name: short name used in reports (``"scifact"``).
        corpus: ``{doc_id: {"title": str, "text": str}}``.
        queries: ``{query_id: text}``, only the queries judged in ``qrels``.
        qrels: ``{query_id: {doc_id: relevance}}`` (graded relevance kept; 0 means judged not relevant).
        split: the split these queries and qrels come from.
        path: the folder it was read from, if any.
        skipped_qrels: counts of qrels rows naming an unknown query (dropped) or document (kept).

    Example:
        >>> ds = RetrievalDataset("toy", {"d1": {"title": "", "text": "pandas eat bamboo"}},
        ...                       {"q1": "what do pandas eat?"}, {"q1": {"d1": 1}})
        >>> ds.stats()["documents"]
        1
    """

    name: str
    corpus: dict[str, dict[str, str]]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    split: str = "test"
    path: str | None = None
    skipped_qrels: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = self.path or self.name
        if not self.corpus:
            raise InputError(f"dataset {where!r}: the corpus is empty")
        if not self.queries or not self.qrels:
            raise InputError(
                f"dataset {where!r}, split {self.split!r}: no judged queries (empty split); "
                "check that the qrels and queries files name the same query ids"
            )

    def stats(self) -> dict[str, int]:
        """Counts for reports: documents, queries, judgments and relevant judgments."""
        judgments = sum(len(docs) for docs in self.qrels.values())
        relevant = sum(1 for docs in self.qrels.values() for rel in docs.values() if rel > 0)
        return {
            "documents": len(self.corpus),
            "queries": len(self.queries),
            "judgments": judgments,
            "relevant": relevant,
            **{f"skipped_{k}": v for k, v in self.skipped_qrels.items() if v},
        }

    def corpus_fingerprint(self) -> str:
        """Hash of the corpus content (ids, titles, texts, in order): part of the embedding cache key."""
        digest = hashlib.sha256()
        for doc_id, doc in self.corpus.items():
            digest.update(f"{doc_id}\x00{doc.get('title', '')}\x00{doc['text']}\x01".encode())
        return digest.hexdigest()[:16]

    def queries_fingerprint(self) -> str:
        """Hash of the evaluated queries (ids and texts): part of the search cache key."""
        digest = hashlib.sha256()
        for query_id, text in self.queries.items():
            digest.update(f"{query_id}\x00{text}\x01".encode())
        return digest.hexdigest()[:16]


def detect_layout(folder: str, split: str) -> Layout:
    """Which layout a folder holds; raises with the expected files when neither is complete."""
    if not os.path.isdir(folder):
        raise DataFormatError(f"dataset folder not found; {BEIR_LAYOUT_HELP}", folder)
    has = lambda name: os.path.isfile(os.path.join(folder, name))  # noqa: E731
    if not has("corpus.jsonl"):
        raise DataFormatError(f"no corpus.jsonl; {BEIR_LAYOUT_HELP}", folder)
    if has(f"{split}_queries.jsonl") or has(f"{split}_qrels.jsonl"):
        return "custom"
    if has("queries.jsonl") and os.path.isdir(os.path.join(folder, "qrels")):
        return "beir"
    missing = [
        n for n in ("queries.jsonl", f"qrels/{split}.tsv") if not os.path.exists(os.path.join(folder, n))
    ]
    raise DataFormatError(f"missing {', '.join(missing)} for split {split!r}; {BEIR_LAYOUT_HELP}", folder)


def is_dataset_folder(folder: str) -> bool:
    """True when ``folder`` holds a corpus plus queries and qrels in one of the two layouts."""
    if not os.path.isfile(os.path.join(folder, "corpus.jsonl")):
        return False
    names = os.listdir(folder)
    if any(n.endswith("_qrels.jsonl") for n in names):
        return True
    return "queries.jsonl" in names and os.path.isdir(os.path.join(folder, "qrels"))


def find_dataset_folders(root: str) -> list[str]:
    """Complete dataset folders directly under ``root`` (sorted); folders without a corpus are skipped."""
    if not os.path.isdir(root):
        raise DataFormatError(f"dataset folder not found; {BEIR_LAYOUT_HELP}", root)
    found = [
        os.path.join(root, n) for n in sorted(os.listdir(root)) if is_dataset_folder(os.path.join(root, n))
    ]
    return found


def _parse_relevance(value: Any, path: str, line: int) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataFormatError(f"relevance {value!r} is not a number", path, line) from None
    if number != int(number):
        raise DataFormatError(
            f"relevance {value!r} is not an integer (pytrec_eval needs integers)", path, line
        )
    return int(number)


def read_qrels_tsv(path: str) -> dict[str, dict[str, int]]:
    """Qrels from a BEIR ``.tsv`` (``query-id corpus-id score``, header optional) or a TREC qrels file.

    Four columns are read as TREC (``qid iteration docid relevance``).
    """
    if not os.path.isfile(path):
        raise DataFormatError(f"qrels file not found; {BEIR_LAYOUT_HELP}", path)
    qrels: dict[str, dict[str, int]] = {}
    for line_no, line in iter_text_lines(path):
        if not line.strip():
            continue
        parts = line.rstrip("\n").split("\t") if "\t" in line else line.split()
        parts = [p.strip() for p in parts]
        if len(parts) == 4:
            parts = [parts[0], parts[2], parts[3]]
        if len(parts) != 3:
            raise DataFormatError(
                f"expected 3 columns (query-id, corpus-id, score), got {len(parts)}", path, line_no
            )
        if line_no == 1 and not _looks_numeric(parts[2]):
            continue  # header
        qrels.setdefault(parts[0], {})[parts[1]] = _parse_relevance(parts[2], path, line_no)
    return qrels


def _looks_numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def read_qrels_jsonl(path: str) -> dict[str, dict[str, int]]:
    """Qrels from FlagEmbedding's ``<split>_qrels.jsonl`` (``{"qid", "docid", "relevance"}``)."""
    qrels: dict[str, dict[str, int]] = {}
    for line_no, row in iter_jsonl(path):
        query_id = string_field(row, ("qid", "query-id"), path, line_no, "id")
        doc_id = string_field(row, ("docid", "corpus-id"), path, line_no, "id")
        if "relevance" not in row and "score" not in row:
            raise DataFormatError("missing field 'relevance'", path, line_no)
        qrels.setdefault(query_id, {})[doc_id] = _parse_relevance(
            row.get("relevance", row.get("score")), path, line_no
        )
    return qrels


def restrict_to_judged(
    corpus: Mapping[str, Any],
    queries: dict[str, str],
    qrels: dict[str, dict[str, int]],
    where: str,
) -> tuple[dict[str, str], dict[str, dict[str, int]], dict[str, int]]:
    """Keep judged queries only; drop qrels naming unknown queries, count those naming unknown documents."""
    unknown_queries = unknown_docs = 0
    kept: dict[str, dict[str, int]] = {}
    for query_id, docs in qrels.items():
        if query_id not in queries:
            unknown_queries += len(docs)
            continue
        unknown_docs += sum(1 for d in docs if d not in corpus)
        # kept as BEIR and MTEB keep them: a judged document missing from the corpus still counts in
        # the recall denominator, so scores stay comparable with theirs
        kept[query_id] = dict(docs)
    if unknown_queries or unknown_docs:
        message = (
            f"{where}: skipped {unknown_queries} qrels row(s) naming unknown queries; "
            f"{unknown_docs} row(s) name documents missing from the corpus (kept, as BEIR does: they "
            "can never be retrieved)"
        )
        warnings.warn(message, stacklevel=3)
        logger.warning(message)
    judged = {query_id: queries[query_id] for query_id in kept}
    return judged, kept, {"unknown_queries": unknown_queries, "unknown_documents": unknown_docs}


def load_dataset(
    path: str | os.PathLike[str], split: str = "test", name: str | None = None
) -> RetrievalDataset:
    """Load a local BEIR or FlagEmbedding-custom folder (the layout is detected).

    Args:
        path: the dataset folder.
        split: which qrels to read (``qrels/<split>.tsv`` or ``<split>_qrels.jsonl``).
        name: name for reports; default the folder's name.

    Example:
        >>> ds = load_dataset("../shared/data/scifact", split="test")   # doctest: +SKIP
        >>> ds.stats()["queries"]                                       # doctest: +SKIP
        300
    """
    folder = os.fspath(path)
    layout = detect_layout(folder, split)
    corpus = read_corpus(os.path.join(folder, "corpus.jsonl"))
    if layout == "beir":
        queries = read_queries(os.path.join(folder, "queries.jsonl"))
        qrels_path = os.path.join(folder, "qrels", f"{split}.tsv")
        if not os.path.isfile(qrels_path):
            available = sorted(
                n[:-4] for n in os.listdir(os.path.join(folder, "qrels")) if n.endswith(".tsv")
            )
            raise DataFormatError(
                f"no qrels for split {split!r} (available: {available}); {BEIR_LAYOUT_HELP}", qrels_path
            )
        qrels = read_qrels_tsv(qrels_path)
    else:
        queries = read_queries(os.path.join(folder, f"{split}_queries.jsonl"))
        qrels = read_qrels_jsonl(os.path.join(folder, f"{split}_qrels.jsonl"))
    where = f"{folder} ({split})"
    queries, qrels, skipped = restrict_to_judged(corpus, queries, qrels, where)
    if not qrels:
        raise InputError(
            f"dataset {folder!r}, split {split!r}: no judged queries (empty split, or no qrels row names a "
            "known query and document)"
        )
    return RetrievalDataset(
        name=name or os.path.basename(os.path.normpath(folder)),
        corpus=corpus,
        queries=queries,
        qrels=qrels,
        split=split,
        path=folder,
        skipped_qrels=skipped,
    )


def save_dataset(dataset: RetrievalDataset, folder: str, layout: Layout = "beir") -> None:
    """Write a dataset in the BEIR or custom layout (atomically, file by file).

    Example:
        >>> save_dataset(ds, "/tmp/scifact-custom", layout="custom")   # doctest: +SKIP
    """
    from bgekit.io import atomic_open, write_jsonl_atomic

    id_key = "_id" if layout == "beir" else "id"
    write_jsonl_atomic(
        os.path.join(folder, "corpus.jsonl"),
        (
            {id_key: d, "title": doc.get("title", ""), "text": doc["text"]}
            for d, doc in dataset.corpus.items()
        ),
    )
    queries = ({id_key: q, "text": text} for q, text in dataset.queries.items())
    if layout == "beir":
        write_jsonl_atomic(os.path.join(folder, "queries.jsonl"), queries)
        with atomic_open(
            os.path.join(folder, "qrels", f"{dataset.split}.tsv"), "w", encoding="utf-8"
        ) as handle:
            handle.write("query-id\tcorpus-id\tscore\n")
            for query_id, docs in dataset.qrels.items():
                for doc_id, rel in docs.items():
                    handle.write(f"{query_id}\t{doc_id}\t{rel}\n")
    else:
        write_jsonl_atomic(os.path.join(folder, f"{dataset.split}_queries.jsonl"), queries)
        write_jsonl_atomic(
            os.path.join(folder, f"{dataset.split}_qrels.jsonl"),
            (
                {"qid": q, "docid": d, "relevance": rel}
                for q, docs in dataset.qrels.items()
                for d, rel in docs.items()
            ),
        )
