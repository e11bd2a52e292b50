"""Fixtures of the evaluation tests."""

from __future__ import annotations

import os

import pytest

from fi_evals_core.evals.ray_backend import LOCAL_ENVIRONMENT


@pytest.fixture(scope="module")
def cluster():
    """A real local Ray cluster for a test module: a head with no CPU and two one-CPU worker nodes,
    every one on 127.0.0.1, started and stopped by Ray's own `cluster_utils.Cluster`; this process
    is its driver."""
    for name, value in LOCAL_ENVIRONMENT.items():  # read by Ray at import: loopback stays loopback
        os.environ.setdefault(name, value)
    import ray
    from ray.cluster_utils import Cluster

    loopback = {"node_ip_address": "127.0.0.1", "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, **loopback})
    for _ in range(2):
        cluster.add_node(num_cpus=1, **loopback)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
