"""One `raywarden job` command's connection: Ray's client for the profile, its errors in the gateway's words,
and the log tail."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from typing import Any

import aiohttp
import typer
from ray.job_submission import JobSubmissionClient

from raywarden.cli.common import err_console
from raywarden.client.jobs import connect, gateway_errors, open_client, status_code
from raywarden.client.profile import Profile
from raywarden.errors import GatewayRequestError, PKIError
from raywarden.pki.spiffe import SpiffeId


@dataclass
class JobSession:
    profile: Profile
    client: JobSubmissionClient

    @classmethod
    def open(cls, profile_name: str | None, address: str | None) -> JobSession:
        profile, client = connect(profile_name, address)
        return cls(profile, client)

    @property
    def trust_domain(self) -> str:
        return SpiffeId.parse(self.profile.identity).trust_domain

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a public method of Ray's client. A 401 means the request was refused before anything was
        done (the token ran out during a long command): reconnect with a fresh token and ask once more."""
        try:
            with gateway_errors(self.profile.gateway_url):
                return getattr(self.client, method)(*args, **kwargs)
        except GatewayRequestError as exc:
            if exc.status != 401:
                raise
        self.client = open_client(self.profile)
        with gateway_errors(self.profile.gateway_url):
            return getattr(self.client, method)(*args, **kwargs)

    def tail(self, job_id: str, *, to_stderr: bool = False, collect: bool = False) -> str:
        """Stream the job's logs until it exits (Ray's WebSocket tail). Returns them when ``collect``."""
        parts: list[str] = []
        out = sys.stderr if to_stderr else sys.stdout

        async def pump() -> None:
            async for chunk in self.client.tail_job_logs(job_id):
                if collect:
                    parts.append(chunk)
                else:
                    out.write(chunk)
                    out.flush()

        try:
            asyncio.run(pump())
        except KeyboardInterrupt:
            err_console.print(
                f"\nStopped following; the job keeps running (`raywarden job stop {job_id}` ends it).", markup=False
            )
            raise typer.Exit(130) from None
        except (aiohttp.ClientError, RuntimeError, OSError) as exc:
            status = status_code(exc)
            if status is not None:
                # The handshake's refusal has no body here: ask again over plain HTTP for the gateway's words.
                self.call("get_job_info", job_id)
                raise GatewayRequestError(status, f"the gateway refused the log stream ({status})") from None
            raise GatewayRequestError(
                0,
                f"the log stream ended early: {' '.join(str(exc).split())[:300]}",
                hint=f"`raywarden job status {job_id}`",
            ) from None
        return "".join(parts)


def short_principal(spiffe_id: str | None, trust_domain: str) -> str | None:
    """``alice`` for a user of this trust domain, ``sa:ci-bot`` for a service account; others in full."""
    if not spiffe_id:
        return None
    try:
        parsed = SpiffeId.parse(spiffe_id)
    except PKIError:  # shown as stored when it is not a SPIFFE ID
        return spiffe_id
    if parsed.trust_domain != trust_domain or parsed.kind == "gateway":
        return spiffe_id
    return parsed.name if parsed.kind == "user" else f"{parsed.kind}:{parsed.name}"


def job_row(job: Any, trust_domain: str) -> dict[str, Any]:
    metadata = dict(job.metadata or {})
    # The gateway vouches for owners (gateway/owner_seal.py): a job it did not seal comes without one.
    owner = metadata.get("raywarden.owner")
    if metadata.get("raywarden.outside"):
        owner = None
    return {
        "submission_id": job.submission_id,
        "job_id": job.job_id,
        "status": str(job.status),
        "owner": owner,
        "owner_short": short_principal(owner, trust_domain) if owner else _outside(metadata),
        "entrypoint": job.entrypoint,
        "message": job.message,
        "start_time": job.start_time,
        "end_time": job.end_time,
        "metadata": metadata,
    }


def _outside(metadata: dict[str, Any]) -> str | None:
    if not metadata.get("raywarden.outside"):
        return None
    return "(submitted outside the gateway)"
