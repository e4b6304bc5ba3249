"""Descriptors of the published retrieval benchmarks: small metadata records, in the spirit of mteb's TaskMetadata.

A descriptor says where a benchmark's data lives (its Hugging Face hub dataset), which splits it has,
its main score and the instructions BGE models use with it. ``load`` reads it from a local folder in
BEIR or FlagEmbedding-custom layout when one is given (or found under ``$BGEKIT_DATA_DIR/<name>``),
and otherwise from the hub, which needs network access (and the ``datasets`` package).

Example:
    >>> d = get_descriptor("scifact")
    >>> d.main_score, d.splits
    ('ndcg_at_10', ('train', 'test'))
    >>> ds = d.load(local_dir="../shared/data/scifact")   # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Literal

from bgekit.errors import ConfigError, DataFormatError
from bgekit.evaluation.datasets import RetrievalDataset, is_dataset_folder, load_dataset, restrict_to_judged
from bgekit.models.registry import BGE_EN_QUERY_INSTRUCTION

HubLayout = Literal["beir", "none"]
"""``beir``: the hub repo has ``corpus`` and ``queries`` configs and the qrels as its ``default`` config,
split by split (mteb's BEIR copies, ``mteb/<name>``);
``none``: bgekit has no hub loader for it (its sources need ir_datasets or a custom download): use a
local folder."""

DATA_DIR_ENV = "BGEKIT_DATA_DIR"


@dataclass(frozen=True)
class DatasetDescriptor:
    """Metadata of one retrieval benchmark.

    Attributes:
        name: bgekit's name (lower case, ``"scifact"``, ``"msmarco-dl19"``).
        collection: the benchmark family (``"beir"``, ``"msmarco"``, ``"miracl"``, ``"mldr"``,
            ``"mkqa"``, ``"air-bench"``, ``"mteb"``).
        source: where it is published (a hub dataset id, or an ir_datasets id).
        splits: the splits with judgments.
        main_score: the metric reported first (MTEB's ``main_score``).
        languages: ISO codes.
        hub_layout: how ``load`` reads it from the hub (see ``HubLayout``).
        qrels_source: hub repo of the qrels (its ``default`` config) when not ``source`` itself.
        query_instruction: the instruction BGE's evaluation puts before queries, if any.
        ignore_identical_ids: whether a query's own id must be dropped from its results (ArguAna, Quora).
        reference: the paper or page describing it.
    """

    name: str
    collection: str
    source: str
    splits: tuple[str, ...] = ("test",)
    main_score: str = "ndcg_at_10"
    languages: tuple[str, ...] = ("en",)
    hub_layout: HubLayout = "beir"
    qrels_source: str | None = None
    query_instruction: str | None = None
    ignore_identical_ids: bool = False
    reference: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def load(
        self, split: str | None = None, local_dir: str | os.PathLike[str] | None = None
    ) -> RetrievalDataset:
        """Load from ``local_dir`` (or ``$BGEKIT_DATA_DIR/<name>``), else from the hub (needs network).

        Args:
            split: default the last listed split (``"test"`` for most).
            local_dir: a folder in BEIR or FlagEmbedding-custom layout.
        """
        split = split or self.splits[-1]
        if split not in self.splits:
            raise ConfigError(f"{self.name} has no split {split!r}; its splits are {list(self.splits)}")
        folder = os.fspath(local_dir) if local_dir is not None else None
        if folder is None and os.environ.get(DATA_DIR_ENV):
            candidate = os.path.join(os.environ[DATA_DIR_ENV], self.name)
            folder = candidate if is_dataset_folder(candidate) else None
        if folder is not None:
            return load_dataset(folder, split, name=self.name)
        return self.load_from_hub(split)

    def load_from_hub(self, split: str) -> RetrievalDataset:
        """Read the BEIR-style hub copy (``corpus`` and ``queries`` configs, qrels by split)."""
        if self.hub_layout != "beir":
            raise ConfigError(
                f"{self.name}: bgekit has no hub loader for {self.source}; download it and pass "
                f"local_dir= (BEIR or FlagEmbedding-custom layout) or set ${DATA_DIR_ENV}"
            )
        if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
            raise ConfigError(
                f"{self.name}: HF_HUB_OFFLINE is set, so {self.source} cannot be downloaded; pass "
                f"local_dir= (a BEIR or FlagEmbedding-custom folder) or set ${DATA_DIR_ENV}"
            )
        try:
            import datasets as hf_datasets
        except ImportError as exc:
            raise ConfigError(
                "loading from the hub needs the datasets package: pip install datasets"
            ) from exc
        try:
            corpus_rows = hf_datasets.load_dataset(self.source, "corpus", split="corpus")
            query_rows = hf_datasets.load_dataset(self.source, "queries", split="queries")
            qrels_rows = hf_datasets.load_dataset(self.qrels_source or self.source, "default", split=split)
        except Exception as exc:  # network, authentication, missing repo: all surface as one clear error
            raise DataFormatError(
                f"could not load {self.name} from the hub ({type(exc).__name__}: {exc}); loading needs "
                f"network access; offline, pass local_dir= or set ${DATA_DIR_ENV}",
                self.source,
            ) from exc
        corpus = {
            str(row["_id"]): {"title": row.get("title") or "", "text": row["text"]} for row in corpus_rows
        }
        queries = {str(row["_id"]): row["text"] for row in query_rows}
        qrels: dict[str, dict[str, int]] = {}
        for row in qrels_rows:
            qrels.setdefault(str(row["query-id"]), {})[str(row["corpus-id"])] = int(row["score"])
        queries, qrels, skipped = restrict_to_judged(corpus, queries, qrels, f"{self.source} ({split})")
        return RetrievalDataset(self.name, corpus, queries, qrels, split, None, skipped)


def _beir(name: str, hub: str | None = None, **kwargs: Any) -> DatasetDescriptor:
    source = f"mteb/{hub or name}"
    return DatasetDescriptor(
        name=name,
        collection="beir",
        source=source,
        query_instruction=BGE_EN_QUERY_INSTRUCTION,
        reference="https://arxiv.org/abs/2104.08663",
        **kwargs,
    )


_DESCRIPTORS: list[DatasetDescriptor] = [
    # BEIR (the 18 public sets; test split unless noted). mteb hosts BEIR-layout copies.
    _beir("arguana", ignore_identical_ids=True),
    _beir("climate-fever"),
    _beir("cqadupstack", hub_layout="none", extra={"subsets": 12}),
    _beir("dbpedia-entity", hub="dbpedia", splits=("dev", "test")),
    _beir("fever", splits=("train", "dev", "test")),
    _beir("fiqa", splits=("train", "dev", "test")),
    _beir("hotpotqa", splits=("train", "dev", "test")),
    _beir("msmarco", splits=("train", "dev", "test")),
    _beir("nfcorpus", splits=("train", "dev", "test")),
    _beir("nq"),
    _beir("quora", splits=("dev", "test"), ignore_identical_ids=True),
    _beir("scidocs"),
    _beir("scifact", splits=("train", "test")),
    _beir("trec-covid"),
    _beir("webis-touche2020", hub="touche2020"),
    _beir("bioasq", hub_layout="none"),
    _beir("signal1m", hub_layout="none"),
    _beir("trec-news", hub_layout="none"),
    _beir("robust04", hub_layout="none"),
    # MS MARCO passage: dev (MRR@10 is its official score), TREC DL 2019/2020 (graded qrels, nDCG@10)
    DatasetDescriptor(
        "msmarco-dev",
        "msmarco",
        "irds/msmarco-passage_dev_small",
        ("dev",),
        "mrr_at_10",
        hub_layout="none",
        query_instruction=BGE_EN_QUERY_INSTRUCTION,
        reference="https://microsoft.github.io/msmarco/",
    ),
    DatasetDescriptor(
        "msmarco-dl19",
        "msmarco",
        "irds/msmarco-passage_trec-dl-2019_judged",
        ("test",),
        "ndcg_at_10",
        hub_layout="none",
        query_instruction=BGE_EN_QUERY_INSTRUCTION,
        reference="https://arxiv.org/abs/2003.07820",
    ),
    DatasetDescriptor(
        "msmarco-dl20",
        "msmarco",
        "irds/msmarco-passage_trec-dl-2020_judged",
        ("test",),
        "ndcg_at_10",
        hub_layout="none",
        query_instruction=BGE_EN_QUERY_INSTRUCTION,
        reference="https://arxiv.org/abs/2102.07662",
    ),
    # MIRACL (18 languages, dev split; FlagEmbedding's evaluation uses nDCG@10 and Recall@100)
    DatasetDescriptor(
        "miracl",
        "miracl",
        "miracl/miracl",
        ("train", "dev"),
        "ndcg_at_10",
        languages=(
            "ar",
            "bn",
            "en",
            "es",
            "fa",
            "fi",
            "fr",
            "hi",
            "id",
            "ja",
            "ko",
            "ru",
            "sw",
            "te",
            "th",
            "zh",
            "de",
            "yo",
        ),
        hub_layout="none",
        reference="https://arxiv.org/abs/2210.09984",
    ),
    # MLDR: long documents, 13 languages
    DatasetDescriptor(
        "mldr",
        "mldr",
        "Shitao/MLDR",
        ("train", "dev", "test"),
        "ndcg_at_10",
        languages=("ar", "de", "en", "es", "fr", "hi", "it", "ja", "ko", "pt", "ru", "th", "zh"),
        hub_layout="none",
        reference="https://arxiv.org/abs/2402.03216",
    ),
    # MKQA: cross-lingual QA over English Wikipedia; FlagEmbedding scores Recall@20/100 (answer match)
    DatasetDescriptor(
        "mkqa",
        "mkqa",
        "Shitao/bge-m3-data (MKQA, NQ corpus)",
        ("test",),
        "recall_at_100",
        languages=(
            "ar",
            "da",
            "de",
            "en",
            "es",
            "fi",
            "fr",
            "he",
            "hu",
            "it",
            "ja",
            "km",
            "ko",
            "ms",
            "nl",
            "no",
            "pl",
            "pt",
            "ru",
            "sv",
            "th",
            "tr",
            "vi",
            "zh_cn",
            "zh_hk",
            "zh_tw",
        ),
        hub_layout="none",
        reference="https://arxiv.org/abs/2007.15207",
    ),
    # AIR-Bench: generated heterogeneous benchmark (QA and long-doc tasks); dev public, test hidden
    DatasetDescriptor(
        "air-bench-qa",
        "air-bench",
        "AIR-Bench/qa_*",
        ("dev", "test"),
        "ndcg_at_10",
        languages=("en", "zh"),
        hub_layout="none",
        reference="https://github.com/AIR-Bench/AIR-Bench",
    ),
    DatasetDescriptor(
        "air-bench-long-doc",
        "air-bench",
        "AIR-Bench/long-doc_*",
        ("dev", "test"),
        "recall_at_10",
        hub_layout="none",
        reference="https://github.com/AIR-Bench/AIR-Bench",
    ),
    # MTEB retrieval tasks outside BEIR that have local copies in ../shared/data
    DatasetDescriptor(
        "xquad-en",
        "mteb",
        "google/xquad (MTEB XQuADRetrieval, en)",
        ("test",),
        "ndcg_at_10",
        hub_layout="none",
        reference="https://arxiv.org/abs/1910.11856",
    ),
    DatasetDescriptor(
        "xquad-zh",
        "mteb",
        "google/xquad (MTEB XQuADRetrieval, zh)",
        ("test",),
        "ndcg_at_10",
        languages=("zh",),
        hub_layout="none",
        reference="https://arxiv.org/abs/1910.11856",
    ),
    DatasetDescriptor(
        "cmrc2018-dev",
        "cmrc",
        "ymcui/cmrc2018 (dev, paragraph retrieval view)",
        ("test",),
        "ndcg_at_10",
        languages=("zh",),
        hub_layout="none",
        reference="https://arxiv.org/abs/1810.07366",
    ),
]

DESCRIPTORS: dict[str, DatasetDescriptor] = {d.name: d for d in _DESCRIPTORS}


def known_descriptor_names() -> list[str]:
    """All descriptor names, sorted."""
    return sorted(DESCRIPTORS)


def get_descriptor(name: str) -> DatasetDescriptor:
    """The descriptor named ``name`` (case-insensitive); ConfigError listing valid names otherwise."""
    try:
        return DESCRIPTORS[name.lower()]
    except KeyError:
        raise ConfigError(
            f"unknown dataset {name!r}; known datasets: {', '.join(known_descriptor_names())}"
        ) from None


def descriptors_in(collection: str) -> list[DatasetDescriptor]:
    """All descriptors of one collection (``"beir"``, ``"msmarco"``, ...)."""
    found = [d for d in _DESCRIPTORS if d.collection == collection]
    if not found:
        collections = sorted({d.collection for d in _DESCRIPTORS})
        raise ConfigError(f"unknown collection {collection!r}; known: {collections}")
    return found
