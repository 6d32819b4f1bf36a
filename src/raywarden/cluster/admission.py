"""The head's side of node enrollment: check a join request, sign the node's CSR, let its address in.

Called by the gateway's control handlers (gateway/control/nodes.py); kept here, next to the firewall and
the Ray head, because it decides what reaches Ray.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from raywarden.cluster import firewall
from raywarden.cluster.certlife import Lifetime
from raywarden.cluster.ports import WorkerPorts
from raywarden.config import ClusterConfig
from raywarden.files import read_private
from raywarden.identity.node_records import NodeRegistryError
from raywarden.identity.nodes import NodeRegistry
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import cert_pem, serial_hex
from raywarden.pki.spiffe import NAME_RE, SpiffeId
from raywarden.secret import Secret
from raywarden.state import StateDir, trusted_ca_file

MAX_CSR_BYTES = 4096


class JoinRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    token: str = Field(max_length=128)
    name: str = Field(pattern=NAME_RE.pattern)
    address: str = Field(max_length=15)
    csr_pem: str = Field(max_length=MAX_CSR_BYTES)
    ports: WorkerPorts
    num_cpus: int | None = Field(default=None, ge=0, le=4096)


class NodeAuth(BaseModel):
    """A worker speaking for itself after join: its name and the node secret it was given."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(pattern=NAME_RE.pattern)
    node_secret: str = Field(max_length=128)


def parse(model: type[BaseModel], body: bytes | None) -> Any:
    try:
        return model.model_validate_json(body or b"")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        raise NodeRegistryError(
            f"invalid request: {where}: {first['msg']}", public=f"invalid request: {where}: {first['msg']}", status=400
        ) from None


def head_plan(state: StateDir) -> dict[str, Any]:
    """What a worker needs to know about the head: read from the running head's run state."""
    from raywarden.cluster.runstate import read_run_state

    run = read_run_state(state)
    if run is None or run.node_ip is None:
        raise NodeRegistryError(
            "the head is not running in multi-node mode",
            public="this head takes no nodes",
            status=409,
            hint="start the head with `raywarden up --node-ip ADDR`",
        )
    return {"node_ip": run.node_ip, "gcs_address": f"{run.node_ip}:{run.ports.gcs}", "ports": run.ports.model_dump()}


def admit(
    state: StateDir, config: ClusterConfig, registry: NodeRegistry, request: JoinRequest, source: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Enroll one node. Returns (response body, audit fields); raises NodeRegistryError with the reason."""
    address = _address(request.address)
    if address != source:
        # The firewall lets in the address the node claims: it must be the one it speaks from.
        raise NodeRegistryError(
            f"claimed address {address} differs from source {source}",
            public="the node address must be the address it connects from",
            status=403,
        )
    plan = head_plan(state)
    if address == plan["node_ip"]:
        raise NodeRegistryError(f"address {address} is the head's own", public="that is the head's address", status=409)
    public_key = csr_key(request.csr_pem)
    registry.check_admissible(request.name, address)
    token_id = registry.consume_token(Secret(request.token), used_by=f"{request.name}@{address}")

    spiffe = SpiffeId(config.trust_domain, "node", request.name)
    cert = issue_node_certificate(state, config, public_key, spiffe, address)
    node_secret = Secret(secrets.token_urlsafe(32))
    peers = [plan["node_ip"], *registry.active_addresses()]
    firewall.add_peer(firewall.table_name(state), address)
    registry.add_node(
        name=request.name,
        spiffe_id=str(spiffe),
        address=address,
        serial=serial_hex(cert),
        not_after=cert.not_valid_after_utc,
        ports=request.ports.model_dump(),
        node_secret=node_secret,
        token_id=token_id,
        cert_issued_at=Lifetime.of(cert).issued,
    )
    body = {
        "name": request.name,
        "spiffe_id": str(spiffe),
        "trust_domain": config.trust_domain,
        "node_cert_pem": cert_pem(cert).decode(),
        "internal_ca_pem": trusted_ca_file(state, "internal").read_text(),
        "ray_token": read_private(state.ray_token).decode().strip(),
        "node_secret": node_secret.reveal(),
        "gcs_address": plan["gcs_address"],
        "head": plan,
        "peers": sorted(set(peers)),
        # How long the node's drain before a restart may last (its agent renews the certificate; cluster/agent.py).
        "drain_timeout_s": config.node_drain_timeout.total_seconds(),
    }
    audit = {
        "event": "node.join",
        "node": request.name,
        "node_address": address,
        "serial": serial_hex(cert),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "jti": token_id,
        "ports": request.ports.model_dump(),
    }
    return body, audit


def issue_node_certificate(
    state: StateDir, config: ClusterConfig, public_key: ec.EllipticCurvePublicKey, spiffe: SpiffeId, address: str
) -> x509.Certificate:
    """A worker node's certificate, from the internal CA's current files (after a CA rotation: the new CA)."""
    internal = CertificateAuthority.load("internal", config.trust_domain, state.internal_ca_cert, state.internal_ca_key)
    # Ray's gRPC clients check the server certificate against the IP they dial: the node's address.
    return internal.issue(
        public_key, spiffe, lifetime=config.node_cert_ttl, server=True, client=True, ip_addresses=(address,)
    )


def peers(state: StateDir, registry: NodeRegistry, auth: NodeAuth) -> dict[str, Any]:
    node = registry.authenticate_node(auth.name, Secret(auth.node_secret))
    plan = head_plan(state)
    addresses = {plan["node_ip"], *registry.active_addresses()} - {node.address}
    return {
        "peers": sorted(addresses),
        "revoked": registry.revoked_addresses(),
        # Every access CA the gateway's certificate may come from (during a CA rotation, both): the node
        # learns a new one through the channel its current one authenticates.
        "access_ca_pem": trusted_ca_file(state, "access").read_text(),
    }


def leave(state: StateDir, registry: NodeRegistry, auth: NodeAuth) -> dict[str, Any]:
    node = registry.authenticate_node(auth.name, Secret(auth.node_secret))
    registry.mark_left(node.name)
    firewall.remove_peer(firewall.table_name(state), node.address)
    return {"event": "node.leave", "node": node.name, "node_address": node.address, "serial": node.serial}


def _address(text: str) -> str:
    try:
        ip = ipaddress.IPv4Address(text)
    except ValueError:
        raise NodeRegistryError(
            f"bad node address {text!r}", public="the node address must be IPv4", status=400
        ) from None
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast:
        raise NodeRegistryError(f"unusable node address {ip}", public="unusable node address", status=400)
    return str(ip)


def csr_key(pem: str) -> ec.EllipticCurvePublicKey:
    """Only the CSR's key is used (proof of possession by its signature); everything else comes from the head."""
    try:
        csr = x509.load_pem_x509_csr(pem.encode())
    except ValueError:
        raise NodeRegistryError("unparseable CSR", public="invalid certificate signing request", status=400) from None
    key = csr.public_key()
    if not csr.is_signature_valid or not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise NodeRegistryError(
            "CSR signature invalid or key not ECDSA P-256", public="invalid certificate signing request", status=400
        )
    return key
