"""`raywarden ca rotate`: the file steps of pki/rotation.py, and what hangs on them.

- What still depends on the old CA, checked before a step that would break it: Ray processes that loaded their
  CA file or certificate before the step (Ray reads TLS files only when a process starts), and access
  certificates from the old CA that are still valid (or renewable within a service account's grace).
- What follows a step: the gateway's certificate from the new access CA, the head's node certificate from the
  new internal CA, this machine's profiles of the cluster and an audit record. Every gateway process notices
  the changed certificate and CA bundle files at its next handshake (gateway/tls.py): no signal is needed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from raywarden.audit.cluster import open_cluster_audit
from raywarden.config import ClusterConfig
from raywarden.errors import PKIError
from raywarden.identity.node_records import Node
from raywarden.identity.renewal import MAX_RENEW_GRACE, RenewalStore
from raywarden.identity.store import IdentityStore
from raywarden.pki import rotation
from raywarden.pki.ca_keys import Role
from raywarden.pki.rotation import Step
from raywarden.pki.trust import CaFiles, parse_time, read_rotation, status
from raywarden.state import StateDir


@dataclass(frozen=True)
class Waiting:
    """Something that still needs the old CA: it breaks if the step goes ahead now."""

    what: str
    until: str | None  # when it goes on its own (a certificate's expiry), if known
    hint: str

    def to_dict(self) -> dict[str, Any]:
        return {"what": self.what, "until": self.until, "hint": self.hint}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def ray_started_before(state: StateDir, moment: dt.datetime) -> list[Waiting]:
    """Ray processes that read their CA file and certificate before ``moment``: the head's, and each active
    node's, as of its join or its last renewal whose restart it reported as done (a node restarts Ray with the
    certificate and CA bundle of the renewal answer, cluster/node_renewal.py)."""
    from raywarden.cluster.procs import alive
    from raywarden.cluster.runstate import read_run_state
    from raywarden.identity.nodes import NodeRegistry

    found: list[Waiting] = []
    run = read_run_state(state)
    if run is not None and alive(run.ray_pid) and parse_time(run.started_at) < moment:
        found.append(
            Waiting(
                f"the head's Ray (started {run.started_at})",
                None,
                f"restart it: `raywarden down --state-dir {state.root}` then `raywarden up`",
            )
        )
    for node in NodeRegistry.open(state.identity_db).all():
        last = _node_ray_files_read(node)
        if node.status == "active" and last < moment:
            found.append(
                Waiting(
                    f"node {node.name} (Ray started with files of {last.isoformat()})",
                    node.not_after,
                    "it restarts Ray when it renews its certificate (`raywarden cert status` shows when); or "
                    "leave and join again",
                )
            )
    return found


def _node_ray_files_read(node: Node) -> dt.datetime:
    """When the files a node's running Ray started with were issued: its last renewal's, once the node reported
    the restart that followed it as done; else its join's."""
    joined = parse_time(node.joined_at)
    renewal = node.renewal
    if renewal.renewed_at is None or renewal.reported_at is None or renewal.failures:
        return joined
    renewed = parse_time(renewal.renewed_at)
    return max(joined, renewed) if parse_time(renewal.reported_at) >= renewed else joined


def old_access_certificates(state: StateDir, new_sha256: str, started_at: str) -> list[Waiting]:
    """Certificates from the old access CA that still work or can still renew: they stop when it is dropped."""
    store = IdentityStore.open(state.identity_db)
    renewals = RenewalStore(store)
    now = _now()
    issued_before = parse_time(started_at).isoformat()
    found: list[Waiting] = []
    for cert in renewals.certificates_not_from(new_sha256, issued_before, now - MAX_RENEW_GRACE):
        grace = renewals.renew_grace(cert.spiffe_id) or dt.timedelta(0)
        principal = store.get(cert.spiffe_id)
        if principal is None or principal.disabled or cert.not_after + grace <= now:
            continue
        until = cert.not_after + grace
        renews = "renews on its holder's next command" if cert.not_after > now else "can renew after expiry"
        found.append(
            Waiting(
                f"{cert.spiffe_id}: certificate {cert.serial} from the old access CA",
                until.isoformat(),
                f"it {renews} (the new certificate comes from the new CA); or revoke it: "
                f"`raywarden revoke cert {cert.serial}`",
            )
        )
    return found


def waiting_for(state: StateDir, role: Role) -> list[Waiting]:
    """What the next step of the rotation under way would break if taken now."""
    under_way = read_rotation(state).get(role)
    if under_way is None:
        return []
    if role == "access":
        return old_access_certificates(state, under_way.new_sha256, under_way.published_at)
    if under_way.phase == "published":
        return ray_started_before(state, parse_time(under_way.published_at))
    return ray_started_before(state, parse_time(under_way.switched_at or under_way.published_at))


def full_status(state: StateDir) -> dict[str, Any]:
    found = status(state)
    for role in ("access", "internal"):
        if found[role]["rotation"] is not None:
            found[role]["waiting_for"] = [w.to_dict() for w in waiting_for(state, role)]
    return found


def rotate(
    state: StateDir,
    config: ClusterConfig,
    role: Role,
    *,
    actor: str,
    overlap: dt.timedelta,
    finish: bool = False,
    abort: bool = False,
    force: bool = False,
) -> list[Step]:
    """One `ca rotate` command: start (for the internal CA: publish, and switch once Ray is ready), finish or
    abort. Returns the steps taken, each audited."""
    if finish or abort:
        steps = [_end(state, config, role, actor=actor, finish=finish, force=force)]
    elif role == "access":
        step = rotation.start_access(state, config, actor=actor, overlap=overlap)
        step.notes.append(
            "the gateway keeps its certificate from the old CA until --finish, so that clients and nodes that "
            "trust only the old CA keep connecting and learn the new one over a channel they verify"
        )
        steps = [step]
    else:
        steps = _rotate_internal(state, config, actor=actor, overlap=overlap, force=force)
    if role == "access":
        from raywarden.client.renew import refresh_local_profiles

        changed = refresh_local_profiles(state)
        if changed:
            steps[-1].notes.append(f"profiles on this machine updated: {', '.join(changed)}")
    for step in steps:
        _record(state, config, step, actor=actor, forced=force)
    return steps


def _rotate_internal(
    state: StateDir, config: ClusterConfig, *, actor: str, overlap: dt.timedelta, force: bool
) -> list[Step]:
    steps: list[Step] = []
    under_way = read_rotation(state).internal
    if under_way is not None and under_way.phase == "overlap":
        raise PKIError(
            "the new internal CA is current already; the old one is still trusted",
            hint="end the overlap with `raywarden ca rotate internal --finish` (see `raywarden ca status`)",
        )
    if under_way is None:
        steps.append(rotation.publish_internal(state, config, actor=actor, overlap=overlap))
        under_way = read_rotation(state).internal
    if under_way is None:
        raise PKIError("the internal CA rotation record vanished", hint="see `raywarden ca status`")
    # Ray processes that started before the publication trust the old CA only: nothing may be signed by the new
    # one until they restart (docs/credentials.md "CA rotation").
    waiting = ray_started_before(state, parse_time(under_way.published_at))
    if waiting and not force:
        if not steps:
            raise PKIError(
                f"{len(waiting)} Ray process(es) started before the new internal CA was published and trust only "
                f"the old one: {'; '.join(w.what for w in waiting[:5])}",
                hint=f"{waiting[0].hint}; then run this again. --force makes it current anyway (those processes "
                "then refuse peers with new certificates until they restart)",
            )
        steps[-1].waiting_for = [w.what for w in waiting]
        steps[-1].notes.append(
            "published in the internal CA bundle, signing nothing yet; once these have restarted, run "
            "`raywarden ca rotate internal` again to make it current"
        )
        return steps
    step = rotation.switch_internal(state, config)
    _reissue_head_node(state, config)
    step.notes.append("the head's node certificate is re-issued by the new CA (Ray uses it from its next start)")
    step.waiting_for = [w.what for w in waiting]
    return [*steps, step]


def _end(state: StateDir, config: ClusterConfig, role: Role, *, actor: str, finish: bool, force: bool) -> Step:
    under_way = read_rotation(state).get(role)
    if not finish:
        if role != "internal":
            raise PKIError(
                "--abort withdraws a published internal CA only",
                hint="an access CA rotation ends with `raywarden ca rotate access --finish`",
            )
        return rotation.abort_internal(state, actor=actor)
    if under_way is None or under_way.phase == "published":
        return rotation.finish(state, role, actor=actor, forced=force)  # refuses, saying why
    waiting = waiting_for(state, role)
    if waiting and not force:
        listed = "; ".join(w.what + (f" (until {w.until})" if w.until else "") for w in waiting[:5])
        more = f" and {len(waiting) - 5} more" if len(waiting) > 5 else ""
        raise PKIError(
            f"{len(waiting)} still depend on the old {role} CA and would stop working: {listed}{more}",
            hint=f"{waiting[0].hint}; `raywarden ca status` lists them all. --force drops the old CA anyway",
        )
    if role == "access":
        # Before the old CA leaves the bundle: the gateway must present a certificate its clients keep trusting.
        _reissue_gateway(state, config)
    step = rotation.finish(state, role, actor=actor, forced=force)
    step.waiting_for = [w.what for w in waiting]
    if role == "access":
        step.notes.append("the gateway's certificate is re-issued by the new CA")
    return step


def _reissue_gateway(state: StateDir, config: ClusterConfig) -> None:
    from raywarden.cluster.setup import issue_gateway_certificate

    issue_gateway_certificate(state, config, CaFiles(state, "access").load_current(config.trust_domain))


def _reissue_head_node(state: StateDir, config: ClusterConfig) -> None:
    from raywarden.cluster.runstate import read_run_state
    from raywarden.cluster.setup import issue_head_node_certificate

    run = read_run_state(state)
    internal = CaFiles(state, "internal").load_current(config.trust_domain)
    issue_head_node_certificate(state, config, internal, node_ip=run.node_ip if run is not None else None)


def _record(state: StateDir, config: ClusterConfig, step: Step, *, actor: str, forced: bool) -> None:
    with open_cluster_audit(state, config) as audit:
        audit.append({"kind": "ca", **step.to_dict(), "actor": actor, "forced": forced})
