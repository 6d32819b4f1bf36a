"""`raywarden job ...`: submit and manage Ray jobs through the gateway with the current profile."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from raywarden.cli.common import JsonOption, console, err_console, print_json
from raywarden.client.jobs import GatewayJobClient, connect, parse_runtime_env
from raywarden.errors import GatewayRequestError, UsageError

ProfileOption = Annotated[
    str | None,
    typer.Option("--profile", help="Client profile to use (default: $RAYWARDEN_PROFILE or the current profile)."),
]
JobId = Annotated[str, typer.Argument(help="Submission id of the job (as printed by `job submit`).")]

job_app = typer.Typer(help="Submit and manage Ray jobs through the gateway.", no_args_is_help=True)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def register(app: typer.Typer) -> None:
    app.add_typer(job_app, name="job")


@job_app.command("submit", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    working_dir: Annotated[
        Path | None,
        typer.Option("--working-dir", help="Local folder uploaded as the job's working_dir (like `ray job submit`)."),
    ] = None,
    runtime_env_json: Annotated[
        str | None,
        typer.Option("--runtime-env-json", help='Runtime environment as JSON, e.g. \'{"pip": ["requests"]}\'.'),
    ] = None,
    submission_id: Annotated[str | None, typer.Option(help="Choose the job's submission id.")] = None,
    entrypoint_num_cpus: Annotated[float | None, typer.Option(help="CPUs reserved for the entrypoint.")] = None,
    no_wait: Annotated[bool, typer.Option("--no-wait", help="Print the id and return without following logs.")] = False,
    profile: ProfileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Submit a job: `raywarden job submit [OPTIONS] -- python train.py`. Follows its logs and exits with the
    job's result (0 on SUCCEEDED) unless --no-wait."""
    entrypoint = " ".join(ctx.args).strip()
    if not entrypoint:
        raise UsageError("no entrypoint given", hint="put the command after --, e.g. `-- python train.py`")
    runtime_env = parse_runtime_env(runtime_env_json) or {}
    if working_dir is not None:
        if not working_dir.is_dir():
            raise UsageError(f"--working-dir {working_dir} is not a folder")
        runtime_env["working_dir"] = str(working_dir.resolve())
    client = connect(profile)
    kwargs: dict[str, Any] = {"entrypoint": entrypoint, "runtime_env": runtime_env or None}
    if submission_id:
        kwargs["submission_id"] = submission_id
    if entrypoint_num_cpus is not None:
        kwargs["entrypoint_num_cpus"] = entrypoint_num_cpus
    job_id = _call(client.submit_job, **kwargs)
    if no_wait:
        if json_output:
            print_json({"submission_id": job_id})
        else:
            console.print(f"Job '{job_id}' submitted. Follow it with `raywarden job logs {job_id} --follow`.")
        return
    err_console.print(f"Job '{job_id}' submitted; following its logs.")
    _follow(client, job_id)
    info = _call(client.get_job_info, job_id)
    status = str(info.status)
    if json_output:
        print_json({"submission_id": job_id, "status": status, "message": info.message})
    else:
        colour = "green" if status == "SUCCEEDED" else "red"
        err_console.print(f"Job '{job_id}' [{colour}]{status}[/]" + (f": {info.message}" if info.message else ""))
    raise typer.Exit(0 if status == "SUCCEEDED" else 1)


@job_app.command("list")
def list_jobs(profile: ProfileOption = None, json_output: JsonOption = False) -> None:
    """List the jobs you may see."""
    jobs = _call(connect(profile).list_jobs)
    rows = [_job_dict(j) for j in jobs]
    if json_output:
        print_json(rows)
        return
    from rich.table import Table

    table = Table("submission id", "status", "owner", "entrypoint")
    for row in rows:
        table.add_row(row["submission_id"] or "", row["status"], row["owner"] or "", row["entrypoint"][:60])
    console.print(table)


@job_app.command("status")
def status(job_id: JobId, profile: ProfileOption = None, json_output: JsonOption = False) -> None:
    """Show one job's status."""
    row = _job_dict(_call(connect(profile).get_job_info, job_id))
    if json_output:
        print_json(row)
        return
    for key, value in row.items():
        console.print(f"{key:<14} {value}", markup=False)


@job_app.command("logs")
def logs(
    job_id: JobId,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Stream until the job ends.")] = False,
    profile: ProfileOption = None,
) -> None:
    """Print a job's logs."""
    client = connect(profile)
    if follow:
        _follow(client, job_id)
    else:
        sys.stdout.write(_call(client.get_job_logs, job_id))


@job_app.command("stop")
def stop(job_id: JobId, profile: ProfileOption = None, json_output: JsonOption = False) -> None:
    """Ask Ray to stop a running job."""
    stopped = _call(connect(profile).stop_job, job_id)
    if json_output:
        print_json({"submission_id": job_id, "stop_requested": bool(stopped)})
    else:
        console.print(f"Stop requested for '{job_id}'." if stopped else f"'{job_id}' was not running.")


@job_app.command("delete")
def delete(job_id: JobId, profile: ProfileOption = None, json_output: JsonOption = False) -> None:
    """Delete a finished job's record and logs."""
    deleted = _call(connect(profile).delete_job, job_id)
    if json_output:
        print_json({"submission_id": job_id, "deleted": bool(deleted)})
    else:
        console.print(f"Deleted '{job_id}'.")


def _follow(client: GatewayJobClient, job_id: str) -> None:
    async def pump() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    try:
        asyncio.run(pump())
    except KeyboardInterrupt:
        err_console.print(f"\nStopped following; the job keeps running (`raywarden job stop {job_id}` ends it).")
        raise typer.Exit(130) from None
    except RuntimeError as exc:
        raise GatewayRequestError(0, f"log stream ended: {exc}", hint=f"`raywarden job status {job_id}`") from None


def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Ray's client raises RuntimeError with the server's text; turn that into a raywarden error."""
    try:
        return fn(*args, **kwargs)
    except GatewayRequestError:
        raise
    except RuntimeError as exc:
        text = str(exc)
        hint = "the job id may be wrong: `raywarden job list`" if "404" in text or "does not exist" in text else None
        raise GatewayRequestError(0, text.strip()[:800], hint=hint) from None


def _job_dict(job: Any) -> dict[str, Any]:
    metadata = job.metadata or {}
    return {
        "submission_id": job.submission_id,
        "job_id": job.job_id,
        "status": str(job.status),
        "owner": metadata.get("raywarden.owner"),
        "entrypoint": job.entrypoint,
        "message": job.message,
        "start_time": job.start_time,
        "end_time": job.end_time,
    }
