"""Fixtures for distributed tests: a two-node local Ray cluster started once, and a tiny BGE-M3."""

from __future__ import annotations

import pytest

from tests.builders import build_tiny_m3

ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def ray_cluster():  # noqa: ANN201 - the cluster
    """Two Ray nodes on this machine (1 CPU and 100 MB of object store each), shut down afterwards."""
    from ray.cluster_utils import Cluster

    store = 100 * 1024 * 1024
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "object_store_memory": store, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1, object_store_memory=store)
    ray.init(address=cluster.address, logging_level="WARNING")
    try:
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="session")
def ray_m3_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return build_tiny_m3(tmp_path_factory.mktemp("ray-m3"))
