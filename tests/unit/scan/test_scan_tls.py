"""TLS detection over real loopback sockets: a TLS gateway, gRPC with and without client certificates."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from raywarden.scan import scan_targets_async

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "scan-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("tls")
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


@pytest.fixture
def grpc_ports(cert: tuple[Path, Path]) -> Iterator[tuple[int, int]]:
    """Two TLS gRPC servers with no services: one demands client certificates, one does not."""
    cert_pem, key_pem = cert[0].read_bytes(), cert[1].read_bytes()
    servers = []
    ports = []
    for require in (True, False):
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
        creds = grpc.ssl_server_credentials(
            [(key_pem, cert_pem)], root_certificates=cert_pem, require_client_auth=require
        )
        ports.append(server.add_secure_port("127.0.0.1:0", creds))
        server.start()
        servers.append(server)
    try:
        yield ports[0], ports[1]
    finally:
        for server in servers:
            server.stop(None).wait()


async def _gateway(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        writer.close()
        return
    body = b'{"error": "authentication required", "hint": "run raywarden login"}'
    writer.write(
        b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nX-Raywarden-Gateway: 1\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    await writer.drain()
    writer.close()


@pytest.mark.parametrize("with_ca", [False, True])
def test_tls_endpoints(cert: tuple[Path, Path], grpc_ports: tuple[int, int], with_ca: bool) -> None:
    mtls_port, tls_only_port = grpc_ports

    async def main() -> tuple[int, dict[int, list[tuple[str, str]]]]:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert[0], cert[1])
        server = await asyncio.start_server(_gateway, "127.0.0.1", 0, ssl=ctx)
        gateway_port = server.sockets[0].getsockname()[1]
        try:
            result = await scan_targets_async(
                ["127.0.0.1"], [gateway_port, mtls_port, tls_only_port], 3.0, 4, ca=cert[0] if with_ca else None
            )
        finally:
            server.close()
            await server.wait_closed()
        assert result.errors == []
        found: dict[int, list[tuple[str, str]]] = {gateway_port: [], mtls_port: [], tls_only_port: []}
        for f in result.findings:
            found[f.port].append((f.id, f.severity))
        return gateway_port, found

    gateway_port, found = asyncio.run(main())
    # The lead's acceptance criterion: a gateway over TLS yields nothing above info.
    assert sorted(found[gateway_port]) == [("RW-GATEWAY", "info"), ("RW-HTTP-TLS", "info")]
    assert found[mtls_port] == [("RW-TLS-CLIENT-CERT-REQUIRED", "info")]
    assert found[tls_only_port] == [("RW-GRPC-TLS-NO-CLIENT-CERT", "high")]
