"""A head that takes worker nodes: Ray on a real address, certificates that name it, and the firewall
that keeps everyone but the cluster's own nodes away from Ray's ports.

With a non-loopback node IP, Ray 2.60 binds GCS, raylet, object manager and workers to ``*``, its agents to
the node IP and its Prometheus ports to 0.0.0.0, and offers no flag to change that; so the nftables table is
installed before Ray starts and removed after it stops.
"""

from __future__ import annotations

import ipaddress
import logging

from cryptography import x509

from raywarden.cluster import firewall
from raywarden.cluster.ports import RayPorts, WorkerPorts
from raywarden.cluster.setup import issue_gateway_certificate, reissue_head_certificate
from raywarden.config import ClusterConfig
from raywarden.errors import ConfigError
from raywarden.identity.nodes import NodeRegistry
from raywarden.pki.certs import load_cert
from raywarden.pki.trust import gateway_issuer
from raywarden.state import StateDir

log = logging.getLogger("raywarden.cluster")


def check_node_ip(text: str) -> str:
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        raise ConfigError(
            f"--node-ip {text!r} is not an IPv4 address",
            hint="the head's address on the network the workers use, e.g. 10.0.0.5",
        ) from None
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
        raise ConfigError(
            f"--node-ip {ip} cannot be reached by other hosts",
            hint="leave --node-ip out for a single-node cluster on loopback",
        )
    return str(ip)


def prepare_head(state: StateDir, config: ClusterConfig, node_ip: str) -> ClusterConfig:
    """Certificates for a head at ``node_ip``: the node certificate is reissued on every multi-node `up`
    (Ray reads it at start only, so this is also how it is rotated); the gateway's gains the IP if needed."""
    if config.listen.is_loopback:
        raise ConfigError(
            f"the gateway listens on {config.listen}, which workers cannot reach",
            hint=f"pass --listen 0.0.0.0:{config.listen.port} or --listen {node_ip}:{config.listen.port}",
        )
    reissue_head_certificate(state, config, node_ip=node_ip)
    san = load_cert(state.gateway_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if ipaddress.ip_address(node_ip) not in san.get_values_for_type(x509.IPAddress):
        config = config.model_copy(update={"gateway_hosts": [*config.gateway_hosts, node_ip]})
        issue_gateway_certificate(state, config, gateway_issuer(state, config.trust_domain))
        state.save_config(config)
    return config


def head_plan(
    state: StateDir, config: ClusterConfig, ports: RayPorts, owners: tuple[int, ...] = ()
) -> firewall.FirewallPlan:
    registry = NodeRegistry.open(state.identity_db)
    return firewall.FirewallPlan.for_ports(
        firewall.table_name(state),
        ports,
        peers=registry.active_addresses(),
        banned=registry.revoked_addresses(),
        gateway_port=config.listen.port,
        owners=owners,
        public=public_ports(config),
    )


def public_ports(config: ClusterConfig) -> list[int]:
    """The gateway's listeners: other hosts reach them whatever port the operator picked."""
    return [config.listen.port] + ([config.serve_listen.port] if config.serve_listen is not None else [])


def install_head_firewall(state: StateDir, config: ClusterConfig, ports: RayPorts, owners: tuple[int, ...]) -> None:
    firewall.install(head_plan(state, config, ports, owners))


def cover_unplanned(table: str, ports: RayPorts | WorkerPorts, exposed: dict[int, str]) -> str:
    """A non-loopback Ray listener outside the port plan (a Ray version that opens a new one) is added to
    the protected set rather than left open, and reported."""
    planned = set(ports.all_fixed())
    extra = sorted(p for p in exposed if p not in planned and not ports.min_worker <= p <= ports.max_worker)
    if extra:
        log.warning("Ray opened listeners outside the port plan: %s; added to the firewall's protected set", extra)
        firewall.add_ports(table, extra)
        return f"installed (multi-node; also protecting unplanned ports {extra})"
    return "installed (multi-node)"
