"""Re-issue the gateway or head node certificate of a stopped cluster: the fix `doctor` prints for an
expired or expiring leaf (`python -m raywarden.doctor.renew gateway|node --state-dir DIR`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Literal

from raywarden.audit.cluster import open_cluster_audit
from raywarden.cluster.lifecycle import read_run_state
from raywarden.cluster.procs import alive
from raywarden.cluster.setup import issue_gateway_certificate, issue_head_node_certificate
from raywarden.errors import ClusterError, RaywardenError
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import fingerprint, load_cert, serial_hex
from raywarden.state import StateDir, default_state_dir

Leaf = Literal["gateway", "node"]


def renew_leaf(state: StateDir, which: Leaf) -> str:
    """Issue a fresh certificate and key for ``which``; refused while the cluster runs (it reads them at start)."""
    config = state.load_config()
    run = read_run_state(state)
    if run is not None and (alive(run.ray_pid) or alive(run.gateway_pid)):
        raise ClusterError(
            "the cluster is running; it reads its certificates at start-up",
            hint=f"`raywarden down --state-dir {state.root}` first, then `raywarden up` after",
        )
    if which == "gateway":
        access = CertificateAuthority.load("access", config.trust_domain, state.access_ca_cert, state.access_ca_key)
        issue_gateway_certificate(state, config, access)
        path = state.gateway_cert
    else:
        internal = CertificateAuthority.load(
            "internal", config.trust_domain, state.internal_ca_cert, state.internal_ca_key
        )
        issue_head_node_certificate(state, config, internal)
        path = state.node_cert
    cert = load_cert(path)
    audit = open_cluster_audit(state, config)
    try:
        audit.append(
            {
                "kind": "cluster",
                "event": "cert.renew",
                "certificate": which,
                "serial": serial_hex(cert),
                "sha256": fingerprint(cert),
                "not_after": cert.not_valid_after_utc.isoformat(),
                "actor": f"local:{os.getuid()}",
            }
        )
    finally:
        audit.close()
    return f"new {which} certificate {serial_hex(cert)}, valid until {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raywarden.doctor.renew", description=__doc__)
    parser.add_argument("which", choices=["gateway", "node"], help="which certificate to re-issue")
    parser.add_argument("--state-dir", default=None, help="cluster state dir (default: $RAYWARDEN_STATE_DIR)")
    args = parser.parse_args(argv)
    root = Path(args.state_dir) if args.state_dir else default_state_dir()
    state = StateDir(root.expanduser().absolute())
    try:
        print(renew_leaf(state.require(), args.which))
    except RaywardenError as exc:
        print(f"error: {exc.diagnostics()}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
