"""What an attacker's host sees: run inside a namespace, prints JSON.

``scan HOST PORT...``: for each port, a plain HTTP request and a TLS ClientHello without a client certificate
(followed by an HTTP request if the handshake completes); reports whether any application data came back.
``grpc HOST:PORT CA [CERT KEY]``: whether a gRPC channel with that client certificate becomes ready.
"""

from __future__ import annotations

import json
import socket
import ssl
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any

CONNECT_TIMEOUT = 2.0
READ_TIMEOUT = 3.0


def _request(host: str) -> bytes:
    return f"GET /api/version HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode()


def plain(host: str, port: int) -> dict[str, Any]:
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except TimeoutError:
        return {"result": "filtered", "data": False}
    except ConnectionRefusedError:
        return {"result": "refused", "data": False}
    except OSError as exc:
        return {"result": f"error {exc.strerror}", "data": False}
    with sock:
        sock.settimeout(READ_TIMEOUT)
        try:
            sock.sendall(_request(host))
            got = sock.recv(4096)
        except TimeoutError:
            return {"result": "open, silent", "data": False}
        except OSError as exc:
            return {"result": f"open, {type(exc).__name__}", "data": False}
    if not got:
        return {"result": "open, closed without data", "data": False}
    if got[:1] == b"\x15":  # a TLS alert record: the server speaks TLS and refused the plaintext
        return {"result": "open, TLS alert", "data": False}
    return {"result": "open, ANSWERED", "data": True, "first_bytes": got[:80].decode("latin-1")}


def tls(host: str, port: int) -> dict[str, Any]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    try:
        raw = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except TimeoutError:
        return {"result": "filtered", "data": False}
    except ConnectionRefusedError:
        return {"result": "refused", "data": False}
    except OSError as exc:
        return {"result": f"error {exc.strerror}", "data": False}
    raw.settimeout(READ_TIMEOUT)
    try:
        with ctx.wrap_socket(raw, server_hostname=None) as sock:
            try:
                sock.sendall(_request(host))
                got = sock.recv(4096)
            except ssl.SSLError as exc:
                return {"result": f"TLS refused after handshake ({exc.reason})", "data": False}
            except TimeoutError:
                return {"result": "TLS up, silent", "data": False}
            except OSError as exc:
                return {"result": f"TLS up, {type(exc).__name__}", "data": False}
            if not got:
                return {"result": "TLS up, closed without data", "data": False}
            return {"result": "TLS up, ANSWERED", "data": True, "first_bytes": got[:80].decode("latin-1")}
    except ssl.SSLError as exc:
        return {"result": f"TLS handshake refused ({exc.reason})", "data": False}
    except TimeoutError:
        return {"result": "open, no TLS answer", "data": False}
    except OSError as exc:
        return {"result": f"open, {type(exc).__name__}", "data": False}


def scan(host: str, ports: list[int]) -> dict[str, Any]:
    def one(port: int) -> tuple[int, dict[str, Any]]:
        return port, {"plain": plain(host, port), "tls": tls(host, port)}

    with ThreadPoolExecutor(max_workers=32) as pool:
        return {str(port): result for port, result in pool.map(one, ports)}


def grpc_ready(target: str, ca: str, cert: str | None, key: str | None) -> dict[str, Any]:
    import grpc

    with open(ca, "rb") as f:
        root = f.read()
    chain = open(cert, "rb").read() if cert else None
    private = open(key, "rb").read() if key else None
    creds = grpc.ssl_channel_credentials(root, private, chain)
    channel = grpc.secure_channel(target, creds)
    try:
        grpc.channel_ready_future(channel).result(timeout=8)
        return {"ready": True}
    except grpc.FutureTimeoutError:
        return {"ready": False}
    finally:
        channel.close()


def main() -> None:
    command, *args = sys.argv[1:]
    if command == "scan":
        result = scan(args[0], [int(p) for p in args[1:]])
    elif command == "grpc":
        result = grpc_ready(args[0], args[1], args[2] if len(args) > 2 else None, args[3] if len(args) > 3 else None)
    else:
        raise SystemExit(f"unknown command {command}")
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
