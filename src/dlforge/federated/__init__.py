"""Federated learning with Flower (docs/federated.md): partitions, the client's local training, the server's
strategies, the in-process simulation (no Ray) and the gRPC server/client processes."""

from dlforge.federated.partition import Partition, partition_rows
from dlforge.federated.run import FederatedResult, connect, serve, simulate

__all__ = ["FederatedResult", "Partition", "connect", "partition_rows", "serve", "simulate"]
