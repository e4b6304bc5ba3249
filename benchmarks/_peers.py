"""Peer fast paths for the encode and rerank benchmarks: sentence-transformers on ONNX Runtime and OpenVINO
(fp32, dynamic int8, static int8) and FastEmbed, each in its own virtual environment under .bench/.

Their pins clash with ours and with each other (optimum-onnx and optimum-intel want different optimum
releases), so each peer family gets its own environment, built on first use by ``_common.ensure_venv``.
The graphs they run are prepared once, untimed, in a separate process (``--prepare``), in a writable copy
of the model under .bench/models/<family>/, so the timed worker only loads a finished graph and the peak
memory it reports is inference's alone.

This module is imported by the workers inside those environments: it needs only the standard library at
import time.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from _common import REPO

# family -> (requirements, module that proves the install), torch pinned to ours so no CUDA wheel is pulled
VENVS: dict[str, tuple[list[str], str]] = {
    "st-onnx": (["torch==2.13.0", "sentence-transformers[onnx]==5.7.0"], "optimum.onnxruntime"),
    # optimum-intel pinned: left free, the resolver falls back to a release that imports openvino.runtime,
    # which openvino 2026 no longer has
    "st-openvino": (
        [
            "torch==2.13.0",
            "sentence-transformers[openvino]==5.7.0",
            "optimum-intel[openvino]==2.2.0",
            "nncf",
            "datasets",
        ],
        "optimum.intel.openvino",
    ),
    "fastembed": (["fastembed==0.9.1"], "fastembed"),
}
# peer path -> family; a FastEmbed path also needs the st-onnx family's exported graph
ENCODE_PEERS = {
    "st-onnx-fp32": "st-onnx",
    "st-onnx-int8": "st-onnx",
    "st-openvino-fp32": "st-openvino",
    "st-openvino-default": "st-openvino",
    "st-openvino-int8-static": "st-openvino",
    "fastembed-onnx-fp32": "fastembed",
}
RERANK_PEERS = {
    "st-ce-onnx-fp32": "st-onnx",
    "st-ce-onnx-int8": "st-onnx",
    "st-ce-openvino-fp32": "st-openvino",
    "st-ce-openvino-default": "st-openvino",
    "st-ce-openvino-int8-static": "st-openvino",
}
CALIBRATION_SAMPLES = 300
"""Texts for a static int8 peer's calibration (optimum-intel's default sample size)."""


def onnx_quantization_config() -> str:
    """sentence-transformers' dynamic int8 config for this CPU, read from /proc/cpuinfo: avx512_vnni,
    avx512 or avx2 on x86, arm64 on ARM."""
    import platform

    if platform.machine().lower() in ("aarch64", "arm64"):
        return "arm64"
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = set(next(x for x in text.splitlines() if x.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        flags = set()
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    return "avx512" if "avx512f" in flags else "avx2"


def model_copy(family: str, model: str) -> str:
    """A writable copy of ``model`` for one peer family: the peers write their exports into it. Named by
    the weights' hash, so a model rebuilt identically (rerank.py's seeded cross-encoder) is found again."""
    import hashlib

    digest = hashlib.sha1()
    for name in sorted(os.listdir(model)):
        if name.endswith((".json", ".safetensors", ".bin", ".txt")):
            with open(os.path.join(model, name), "rb") as handle:
                digest.update(name.encode() + handle.read())
    target = REPO / ".bench" / "models" / family / f"{Path(model).name[:40]}-{digest.hexdigest()[:12]}"
    if not (target / "config.json").exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        staged = target.with_name(target.name + ".partial")
        shutil.rmtree(staged, ignore_errors=True)
        shutil.copytree(model, staged, ignore=shutil.ignore_patterns("onnx", "openvino", ".*"))
        os.replace(staged, target)
    return str(target)


def _onnx_session_kwargs(threads: int) -> dict[str, Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    return {"provider": "CPUExecutionProvider", "session_options": options}


def _ov_kwargs(threads: int, path: str) -> dict[str, Any]:
    """OpenVINO's session config. Left alone, OpenVINO runs "fp32" graphs in bf16 on CPUs with AMX or
    AVX512-BF16; the ``-fp32`` paths ask for f32, the ``-default`` path keeps OpenVINO's own choice."""
    config = {"INFERENCE_NUM_THREADS": str(threads), "CACHE_DIR": ""}
    if path.endswith("-fp32"):
        config["INFERENCE_PRECISION_HINT"] = "f32"
    return {"ov_config": config}


def prepare(path: str, model: str, calibration: list[str], cross_encoder: bool = False) -> None:
    """Build the graph ``path`` runs (untimed, in its own process): ST's exports and quantisations."""
    from sentence_transformers import CrossEncoder, SentenceTransformer

    family = (RERANK_PEERS if cross_encoder else ENCODE_PEERS)[path]
    if family == "fastembed":  # FastEmbed runs the graph the st-onnx family exports
        family, path = "st-onnx", "st-onnx-fp32"
    folder = model_copy(family, model)
    cls: Any = CrossEncoder if cross_encoder else SentenceTransformer
    if family == "st-onnx":
        st = cls(folder, device="cpu", backend="onnx")
        if not os.path.exists(os.path.join(folder, "onnx", "model.onnx")):
            st.save_pretrained(folder)
        if path.endswith("int8"):
            from sentence_transformers import export_dynamic_quantized_onnx_model

            export_dynamic_quantized_onnx_model(st, onnx_quantization_config(), folder)
        return
    st = cls(folder, device="cpu", backend="openvino")
    if not os.path.exists(os.path.join(folder, "openvino", "openvino_model.xml")):
        st.save_pretrained(folder)
    if path.endswith("int8-static"):
        export_static_openvino(st, folder, calibration)


def export_static_openvino(st: Any, folder: str, texts: list[str]) -> None:
    """ST's ``export_static_quantized_openvino_model``, its calibration set a local ``datasets.Dataset``
    of ``texts`` (the hub is unreachable): the function is run as it is, with optimum-intel's
    ``OVQuantizer.get_calibration_dataset`` answering from the local texts (tokenised by ST's own
    preprocess function, padded to 384 as ST does) instead of downloading GLUE SST-2."""
    import datasets
    from optimum.intel.openvino import OVQuantizationConfig, OVQuantizer
    from sentence_transformers import export_static_quantized_openvino_model

    def local_dataset(self: Any, dataset_name: str, *args: Any, **kwargs: Any) -> Any:
        preprocess = kwargs["preprocess_function"]
        local = datasets.Dataset.from_dict({"sentence": texts[: kwargs.get("num_samples") or len(texts)]})
        return local.map(preprocess, batched=True, remove_columns=["sentence"])

    original = OVQuantizer.get_calibration_dataset
    OVQuantizer.get_calibration_dataset = local_dataset  # type: ignore[method-assign]
    try:
        export_static_quantized_openvino_model(
            st, OVQuantizationConfig(num_samples=len(texts)), folder, file_suffix="qint8_quantized"
        )
    finally:
        OVQuantizer.get_calibration_dataset = original  # type: ignore[method-assign]


def load_encoder(path: str, model: str, threads: int, max_length: int) -> Any:
    """A callable ``texts -> normalised vectors (n, dim)`` for an encode peer path, graph prepared."""
    family = ENCODE_PEERS[path]
    if family == "fastembed":
        return _fastembed(model, threads, max_length)
    from sentence_transformers import SentenceTransformer

    folder = model_copy(family, model)
    kwargs = _onnx_session_kwargs(threads) if family == "st-onnx" else _ov_kwargs(threads, path)
    if path == "st-onnx-int8":
        kwargs["file_name"] = f"model_qint8_{onnx_quantization_config()}.onnx"
    if path == "st-openvino-int8-static":
        kwargs["file_name"] = "openvino_model_qint8_quantized.xml"
    backend = "onnx" if family == "st-onnx" else "openvino"
    st = SentenceTransformer(folder, device="cpu", backend=backend, model_kwargs=kwargs)
    st.max_seq_length = max_length
    return lambda texts: st.encode(texts, batch_size=32, normalize_embeddings=True)


def _fastembed(model: str, threads: int, max_length: int) -> Any:
    """FastEmbed on the graph sentence-transformers exported (st-onnx's onnx/model.onnx), mean pooling
    and normalisation as the model's sentence-transformers config says, loaded from the local folder."""
    import json

    import numpy as np
    from fastembed import TextEmbedding
    from fastembed.common.model_description import ModelSource, PoolingType

    folder = model_copy("st-onnx", model)
    if not os.path.exists(os.path.join(folder, "onnx", "model.onnx")):
        raise RuntimeError(f"{folder}/onnx/model.onnx is missing: run the st-onnx-fp32 path first")
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        dim = int(json.load(handle)["hidden_size"])
    name = "bgekit-bench/" + Path(model).name
    TextEmbedding.add_custom_model(
        model=name,
        pooling=PoolingType.MEAN,
        normalization=True,
        sources=ModelSource(hf=name),
        dim=dim,
        model_file="onnx/model.onnx",
    )
    fe = TextEmbedding(model_name=name, threads=threads, specific_model_path=folder, local_files_only=True)
    fe.model.tokenizer.enable_truncation(max_length=max_length)  # same limit as every other path
    return lambda texts: np.asarray(list(fe.embed(texts, batch_size=32)), dtype=np.float32)


def load_cross_encoder(path: str, model: str, threads: int, max_length: int) -> Any:
    """A callable ``pairs -> raw scores`` for a rerank peer path, graph prepared."""
    from sentence_transformers import CrossEncoder

    family = RERANK_PEERS[path]
    folder = model_copy(family, model)
    kwargs = _onnx_session_kwargs(threads) if family == "st-onnx" else _ov_kwargs(threads, path)
    if path == "st-ce-onnx-int8":
        kwargs["file_name"] = f"model_qint8_{onnx_quantization_config()}.onnx"
    if path == "st-ce-openvino-int8-static":
        kwargs["file_name"] = "openvino_model_qint8_quantized.xml"
    backend = "onnx" if family == "st-onnx" else "openvino"
    ce = CrossEncoder(folder, device="cpu", backend=backend, max_length=max_length, model_kwargs=kwargs)

    def score(pairs: list[tuple[str, str]], batch_size: int) -> Any:
        import torch

        return ce.predict(
            pairs, batch_size=batch_size, activation_fn=torch.nn.Identity(), show_progress_bar=False
        )

    return score


def peer_python(family: str) -> Path:
    """The interpreter of a peer family's environment (built on first use); PeerInstallError if not."""
    from _common import ensure_venv

    requirements, probe = VENVS[family]
    return ensure_venv(family, requirements, probe)


def run_peer(
    script: str, path: str, family: str, args: list[str], threads: int, prepare_first: bool = True
) -> dict[str, Any]:
    """Prepare ``path``'s graph in one process of its environment, then time it in a fresh one."""
    from _common import run_worker

    python = peer_python(family)
    if prepare_first:
        if family == "fastembed":  # FastEmbed runs the graph the st-onnx family exported
            run_worker(script, [path, "--prepare", *args], threads, peer_python("st-onnx"))
        else:
            run_worker(script, [path, "--prepare", *args], threads, python)
    return run_worker(script, [path, *args], threads, python)
