"""Running a whole rangekv cluster locally (``rangekv up``, integration tests, benchmarks)."""

from rangekv.cluster.local import (
    ClusterError,
    LocalCluster,
    cluster_ready,
    find_free_base_port,
    running_cluster,
)

__all__ = [
    "ClusterError",
    "LocalCluster",
    "cluster_ready",
    "find_free_base_port",
    "running_cluster",
]
