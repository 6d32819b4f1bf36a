"""The gateway's and the Serve listener's addresses: checked free before `up` starts anything, and changed for
later `up`s (a host the gateway certificate does not name gets a new certificate; profiles follow the URL)."""

from __future__ import annotations

import json

from cryptography import x509

from raywarden.client.profile import list_profiles
from raywarden.cluster.setup import gateway_url, issue_gateway_certificate
from raywarden.config import ClusterConfig, Listen
from raywarden.errors import ClusterError
from raywarden.files import write_private
from raywarden.pki.certs import load_cert
from raywarden.pki.trust import gateway_issuer
from raywarden.state import StateDir


def require_free(listen: Listen) -> None:
    import socket

    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((listen.host, listen.port))
        except OSError as exc:
            raise ClusterError(
                f"cannot listen on {listen}: {exc.strerror}", hint="pick another address with --listen HOST:PORT"
            ) from None


def change_serve_listen(state: StateDir, config: ClusterConfig, listen: Listen) -> ClusterConfig:
    """The Serve listener's address, kept for later `up`s; its host joins the gateway certificate's names."""
    config = config.model_copy(update={"serve_listen": listen})
    if listen.host not in _certificate_names(state) and listen.host not in ("0.0.0.0", "::"):  # noqa: S104
        hosts = [h for h in (*config.gateway_hosts, listen.host) if h]
        config = config.model_copy(update={"gateway_hosts": list(dict.fromkeys(hosts))})
        issue_gateway_certificate(state, config, gateway_issuer(state, config.trust_domain))
    state.save_config(config)
    return config


def _certificate_names(state: StateDir) -> set[str]:
    cert = load_cert(state.gateway_cert)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(v) for v in san.get_values_for_type(x509.IPAddress)} | set(san.get_values_for_type(x509.DNSName))


def change_listen(state: StateDir, config: ClusterConfig, listen: Listen) -> ClusterConfig:
    config = config.model_copy(update={"listen": listen})
    if listen.host not in _certificate_names(state) and listen.host not in ("0.0.0.0", "::"):  # noqa: S104
        issue_gateway_certificate(state, config, gateway_issuer(state, config.trust_domain))
    state.save_config(config)
    for profile in list_profiles():
        if profile.state_dir == str(state.root):
            meta = profile.folder / "profile.json"
            data = json.loads(meta.read_text())
            data["gateway_url"] = gateway_url(config)
            write_private(meta, (json.dumps(data, indent=2) + "\n").encode())
    return config
