"""A gateway client for the renewal test, run inside a namespace: one keep-alive connection used every
INTERVAL seconds, and a fresh connection each time, until STOP_FILE exists. Writes one JSON line per round:
which certificate serial each connection was served, the keep-alive connection's local port (a reconnect
would change it) and the answers' status codes.

``python -m tests.multinode.keepalive HOST PORT CA OUT STOP_FILE``
"""

from __future__ import annotations

import http.client
import json
import ssl
import sys
import time
from pathlib import Path

from cryptography import x509

INTERVAL = 2.0  # below uvicorn's keep-alive timeout (5 s)


def serial_of(conn: http.client.HTTPSConnection) -> str:
    sock = conn.sock
    if not isinstance(sock, ssl.SSLSocket):
        return "none"
    der = sock.getpeercert(binary_form=True)
    return format(x509.load_der_x509_certificate(der).serial_number, "x") if der else "none"


def get(conn: http.client.HTTPSConnection) -> int:
    conn.request("GET", "/raywarden/v1/ca")
    resp = conn.getresponse()
    resp.read()
    return resp.status


def main() -> None:
    host, port, ca, out, stop = sys.argv[1], int(sys.argv[2]), sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5])
    ctx = ssl.create_default_context(cafile=ca)
    kept = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
    with out.open("a") as log:
        while not stop.exists():
            row: dict[str, object] = {"t": time.time()}
            try:
                row["kept_status"] = get(kept)
                row["kept_serial"] = serial_of(kept)
                row["kept_port"] = kept.sock.getsockname()[1] if kept.sock else None
            except (OSError, http.client.HTTPException) as exc:
                row["kept_error"] = f"{type(exc).__name__}: {exc}"
            fresh = http.client.HTTPSConnection(host, port, context=ctx, timeout=30)
            try:
                row["fresh_status"] = get(fresh)
                row["fresh_serial"] = serial_of(fresh)
            except (OSError, http.client.HTTPException) as exc:
                row["fresh_error"] = f"{type(exc).__name__}: {exc}"
            finally:
                fresh.close()
            log.write(json.dumps(row) + "\n")
            log.flush()
            time.sleep(INTERVAL)
    kept.close()


if __name__ == "__main__":
    main()
