"""Where a cluster's state lives on disk (its configuration's model is in config.py).

One state dir belongs to one cluster. Everything secret in it is 0600 inside 0700 folders.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from raywarden.config import ClusterConfig
from raywarden.errors import ConfigError
from raywarden.files import ensure_private_dir, write_private

# Where clusters whose Ray runs as a user of its own keep that user's folder (docs/threat-model.md): not /tmp,
# whose files systemd-tmpfiles may age out on a long-running host, and not the state dir, which Ray must never
# reach. Fixed and short: Ray's unix socket paths below it must stay under 108 bytes.
SEPARATED_RUNTIME_ROOT = Path("/var/lib/raywarden")


def runtime_dir_for(root: Path, *, separated: bool) -> Path:
    """The per-cluster folder outside the state dir for what runs: Ray's own folder and Prometheus's data.

    Separated: ``/var/lib/raywarden/ID`` (root's, 0711). Shared: ``/tmp/rw-ID`` (the operator's, 0700), as
    without root nothing else is writable; its short path keeps Ray's socket paths in bounds.
    """
    digest = hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]
    if separated:
        return SEPARATED_RUNTIME_ROOT / digest
    return Path("/tmp") / f"rw-{digest}"  # noqa: S108 - created 0700 and owned by the cluster's user


def raywarden_home() -> Path:
    """Client-side home: profiles and, by default, the local cluster's state dir."""
    return Path(os.environ.get("RAYWARDEN_HOME") or Path.home() / ".raywarden").expanduser()


def default_state_dir() -> Path:
    env = os.environ.get("RAYWARDEN_STATE_DIR")
    return Path(env).expanduser() if env else raywarden_home() / "cluster"


@dataclass(frozen=True)
class StateDir:
    """Paths inside one cluster's state dir. Knows the layout; creates nothing until asked."""

    root: Path

    @property
    def config_path(self) -> Path:
        return self.root / "config.json"

    @property
    def pki_dir(self) -> Path:
        return self.root / "pki"

    @property
    def access_ca_cert(self) -> Path:
        return self.pki_dir / "access-ca.crt"

    @property
    def access_ca_key(self) -> Path:
        return self.pki_dir / "access-ca.key"

    @property
    def internal_ca_cert(self) -> Path:
        return self.pki_dir / "internal-ca.crt"

    @property
    def internal_ca_key(self) -> Path:
        return self.pki_dir / "internal-ca.key"

    @property
    def access_ca_bundle(self) -> Path:
        """Every access CA trusted at the moment (during a CA rotation: the old and the new one)."""
        return self.pki_dir / "access-ca-bundle.pem"

    @property
    def internal_ca_bundle(self) -> Path:
        """Every internal CA trusted at the moment (during a CA rotation: the old and the new one)."""
        return self.pki_dir / "internal-ca-bundle.pem"

    @property
    def renewal_lock(self) -> Path:
        """Held while the head's own certificates are written, so that readers see a key and its certificate
        together and a renewal happens once (gateway/renewal.py)."""
        return self.pki_dir / ".renewal.lock"

    @property
    def gateway_renewal_status(self) -> Path:
        """The gateway certificate renewer's last attempt (read by `cert status` and `doctor`)."""
        return self.run_dir / "gateway-renewal.json"

    @property
    def gateway_cert(self) -> Path:
        return self.pki_dir / "gateway.crt"

    @property
    def gateway_key(self) -> Path:
        return self.pki_dir / "gateway.key"

    @property
    def node_cert(self) -> Path:
        return self.pki_dir / "node.crt"

    @property
    def node_key(self) -> Path:
        return self.pki_dir / "node.key"

    @property
    def keys_dir(self) -> Path:
        return self.root / "keys"

    @property
    def ray_token(self) -> Path:
        return self.keys_dir / "ray-token"

    @property
    def audit_key(self) -> Path:
        return self.keys_dir / "audit-ed25519.key"

    @property
    def audit_dir(self) -> Path:
        return self.root / "audit"

    @property
    def identity_db(self) -> Path:
        return self.root / "identity.db"

    @property
    def policy_dir(self) -> Path:
        """Operator policies (``*.cedar``), loaded after the shipped default pack."""
        return self.root / "policies"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def separated(self) -> bool:
        """The configuration says Ray runs as a user of its own (False when there is no readable config)."""
        try:
            return bool(json.loads(self.config_path.read_text()).get("ray_user"))
        except (OSError, ValueError, AttributeError):
            return False

    @property
    def runtime_dir(self) -> Path:
        return runtime_dir_for(self.root, separated=self.separated)

    @property
    def ray_dir(self) -> Path:
        """Ray's own folder (cluster/raydir.py): its credentials, its start log, its home and temp dir."""
        return self.runtime_dir / "ray"

    @property
    def ray_temp_dir(self) -> Path:
        # Ray puts unix sockets under its temp dir and their paths must stay below 108 bytes, so the temp dir is
        # short and derived from the state dir: two clusters never share one. Ray chmods its temp dir and
        # session, sockets and logs dirs to 0777 (ray/_common/utils.py try_make_directory_shared); Ray's own
        # 0700 folder around it keeps everyone else out, and `up` tightens them once Ray has made them.
        return self.ray_dir / "tmp"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def require(self) -> StateDir:
        if not self.exists():
            raise ConfigError(
                f"no raywarden cluster state in {self.root}",
                hint="run `raywarden init` first, or pass --state-dir / set RAYWARDEN_STATE_DIR",
            )
        return self

    def load_config(self) -> ClusterConfig:
        self.require()
        try:
            return ClusterConfig.model_validate_json(self.config_path.read_text())
        except ValidationError as exc:
            raise ConfigError(f"{self.config_path} is invalid: {exc}", hint="fix or re-create it") from None

    def save_config(self, config: ClusterConfig) -> None:
        ensure_private_dir(self.root)
        write_private(self.config_path, (json.dumps(config.model_dump(mode="json"), indent=2) + "\n").encode())


def trusted_ca_file(state: StateDir, role: Literal["access", "internal"]) -> Path:
    """The file to verify peers of ``role`` with: the CA bundle while one exists (a CA rotation is under way or
    done), else the single CA certificate."""
    bundle = state.access_ca_bundle if role == "access" else state.internal_ca_bundle
    if bundle.is_file():
        return bundle
    return state.access_ca_cert if role == "access" else state.internal_ca_cert
