"""What the cluster tests share."""

from __future__ import annotations

from raywarden.cluster.nodestate import NodeConfig
from raywarden.cluster.ports import WorkerPorts


def joined_worker(name: str, trust_domain: str) -> NodeConfig:
    """node.json as `join` writes it for a worker at 10.9.0.3 whose head is at 10.9.0.2."""
    return NodeConfig(
        head_url="https://10.9.0.2:18443",
        name=name,
        spiffe_id=f"spiffe://{trust_domain}/node/{name}",
        address="10.9.0.3",
        trust_domain=trust_domain,
        gcs_address="10.9.0.2:6379",
        head_ip="10.9.0.2",
        peers=[],
        ports=WorkerPorts.allocate("127.0.0.1"),
        access_ca_fingerprint="0" * 64,
        joined_at="now",
    )
