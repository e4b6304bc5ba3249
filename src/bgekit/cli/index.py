"""Index a corpus for search: encode it once and save vectors (and BGE-M3 lexical weights) with the texts.

The corpus is a BEIR ``corpus.jsonl`` (``_id``, optional ``title``, ``text`` per line). Encoding is
checkpointed chunk by chunk in ``OUTPUT.partial/``: rerun the same command after a crash and it resumes.
The index folder is written atomically; search it with ``bgekit search`` or serve it with ``bgekit serve``.
With ``--ray`` the corpus is encoded on a Ray cluster, into resumable Parquet parts in ``OUTPUT.ray-shards/``.
With ``--store`` the documents go into a Milvus collection instead (a local ``.db`` file is Milvus Lite,
``http://host:19530`` a server): a rerun inserts only the documents not yet there.

Example:
    bgekit index --model BAAI/bge-m3 --corpus corpus.jsonl --output my-index
    bgekit index --model BAAI/bge-m3 --corpus corpus.jsonl --store corpus.db
    bgekit index --model BAAI/bge-m3 --corpus corpus.jsonl --output my-index --ray auto --gpus-per-actor 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from typing import Any

from bgekit.cli.ann_options import add_ann_arguments, ann_of
from bgekit.cli.ray_options import add_ray_arguments, ray_kwargs
from bgekit.cli.runtime_options import add_backend_argument

CHECKPOINT_MARKER = "build.json"
"""What a build checkpoint folder of ``SearchIndex.build`` holds first (see ``search_index._Checkpoint``)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="hub name or local embedder folder")
    parser.add_argument("--corpus", required=True, help="BEIR corpus.jsonl: _id, title (optional), text")
    parser.add_argument("--output", default=None, help="the index folder to write")
    parser.add_argument(
        "--store", default=None, help="a Milvus URI instead: PATH.db (Milvus Lite) or http://host:19530"
    )
    parser.add_argument("--collection", default="bgekit", help="--store: the collection to write")
    parser.add_argument(
        "--token", default=None, help="--store: the server's token (user:password or API key)"
    )
    parser.add_argument("--no-sparse", action="store_true", help="BGE-M3: keep only the dense vectors")
    parser.add_argument(
        "--images",
        action="store_true",
        help="--corpus is a folder of images or a JSONL of image/text rows, embedded by a multimodal model",
    )
    parser.add_argument("--chunk-size", type=int, default=10_000, help="documents between checkpoints")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16", "auto"], default=None)
    add_backend_argument(parser)
    parser.add_argument(
        "--quantization",
        choices=["int8"],
        default=None,
        help="dynamic int8: ONNX Runtime's, or OpenVINO's (per-token groups, full quality) with --backend openvino",
    )
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--devices", nargs="+", default=None, help="one worker per device, e.g. cpu cpu")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="run code shipped with the checkpoint"
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the index already in --output (never another folder)",
    )
    add_ray_arguments(parser)
    add_ann_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from bgekit import Embedder
    from bgekit.errors import ConfigError
    from bgekit.index import SearchIndex

    if (args.output is None) == (args.store is None):
        raise ConfigError("give one of --output (an index folder) and --store (a Milvus URI)")
    ann = ann_of(args)  # checked before the model loads
    if args.store is not None and not ann.exact:
        raise ConfigError("--ann builds an index folder (--output); a Milvus store makes its own indexes")
    if args.output is not None:
        check_output(args.output, overwrite=getattr(args, "overwrite", False))
    if getattr(args, "images", False):
        from bgekit.multimodal.cli import index_images

        return index_images(args, ann)
    embedder = Embedder(
        args.model,
        dtype=args.dtype,
        backend=args.backend,
        quantization=args.quantization,
        batch_size=args.batch_size,
        devices=args.devices,
        trust_remote_code=args.trust_remote_code,
        show_progress=False,
    )
    if args.store is not None and args.ray is not None:
        raise ConfigError("--ray builds an index folder (--output); it does not write to --store")
    if args.store is not None:
        return _index_into_store(args, embedder)
    if args.ray is not None:
        return _index_through_ray(args, embedder)
    partial = args.output.rstrip("/") + ".partial"
    try:
        index = SearchIndex.build(
            embedder,
            args.corpus,
            sparse=False if args.no_sparse else None,
            chunk_size=args.chunk_size,
            checkpoint_dir=partial,
            show_progress=not args.no_progress,
            ann=ann,
        )
    finally:
        embedder.close()
    index.save(args.output)
    remove_checkpoint(partial)
    resumed = index.info.get("chunks_resumed", 0)
    print(
        f"indexed {len(index)} documents ({', '.join(index.modes)}) -> {args.output} in "
        f"{index.info['encode_seconds']:.1f}s" + (f" ({resumed} chunk(s) resumed)" if resumed else ""),
        file=sys.stderr,
    )
    return 0


def check_output(output: str, *, overwrite: bool) -> None:
    """Refuse an ``--output`` that holds anything unless ``--overwrite`` (and then only an index: saving
    never replaces another folder), and a ``.partial`` folder that is not a build checkpoint of ours.

    Example:
        >>> check_output("/nonexistent/index", overwrite=False)
    """
    from bgekit.errors import ConfigError
    from bgekit.index.search_index import META_FILE

    if os.path.exists(output) and not (os.path.isdir(output) and not os.listdir(output)):
        if not os.path.isfile(os.path.join(output, META_FILE)):
            raise ConfigError(f"--output {output} exists and is not a bgekit index; choose another folder")
        if not overwrite:
            raise ConfigError(f"--output {output} already holds an index; pass --overwrite to replace it")
    partial = output.rstrip("/") + ".partial"
    if os.path.exists(partial) and not os.path.isfile(os.path.join(partial, CHECKPOINT_MARKER)):
        raise ConfigError(
            f"{partial} exists and is not a build checkpoint of bgekit (no {CHECKPOINT_MARKER}); "
            "move it away, since bgekit keeps its checkpoint there and deletes it when done"
        )


def remove_checkpoint(partial: str) -> None:
    """Delete a build checkpoint folder, and only one that bgekit made (it holds the build marker)."""
    if os.path.isfile(os.path.join(partial, CHECKPOINT_MARKER)):
        shutil.rmtree(partial, ignore_errors=True)


def _index_into_store(args: argparse.Namespace, embedder: Any) -> int:
    from bgekit.stores import MilvusStore

    try:
        store = MilvusStore.build(
            embedder,
            args.corpus,
            args.store,
            collection=args.collection,
            token=args.token,
            sparse=False if args.no_sparse else None,
            chunk_size=args.chunk_size,
            show_progress=not args.no_progress,
        )
    finally:
        embedder.close()
    with store:
        print(
            f"{len(store)} documents ({', '.join(store.modes)}) in collection {args.collection!r} of {args.store}",
            file=sys.stderr,
        )
    return 0


def _index_through_ray(args: argparse.Namespace, embedder: Any) -> int:
    from bgekit.distributed.ray_encode import build_search_index, encode_with_ray

    shards = args.output.rstrip("/") + ".ray-shards"
    try:
        result = encode_with_ray(
            embedder,
            args.corpus,
            shards,
            sparse=False if args.no_sparse else None,
            show_progress=not args.no_progress,
            **ray_kwargs(args),
        )
        index = build_search_index(embedder, shards)
        index.set_ann(ann_of(args))
    finally:
        embedder.close()
    index.save(args.output)
    shutil.rmtree(shards, ignore_errors=True)
    print(
        f"indexed {len(index)} documents ({', '.join(index.modes)}) -> {args.output}: encoded on Ray by "
        f"{result.num_actors} actor(s) in {result.seconds:.1f}s ({result.shards_skipped} of "
        f"{result.shards} shard(s) resumed)",
        file=sys.stderr,
    )
    return 0
