"""`raywarden job ...`: a drop-in for `ray job ...` that goes through the gateway with the current profile.

Same subcommands, options, entrypoint quoting and exit codes as Ray's own `ray job`
(``ray/dashboard/modules/job/cli.py``): `submit` exits 1 when the job FAILED and 0 otherwise, `stop` waits
for the job to end unless --no-wait. Job output goes to stdout, our own messages to stderr.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from raywarden.cli import job_inputs
from raywarden.cli.common import (
    JsonOption,
    ProfileOption,
    WideOption,
    console,
    err_console,
    print_json,
    print_rows,
)
from raywarden.cli.job_session import JobSession, job_row
from raywarden.errors import UsageError

JobId = Annotated[str, typer.Argument(metavar="JOB_ID", help="Submission id of the job (as `job submit` prints it).")]
AddressOption = Annotated[
    str | None,
    typer.Option(
        "--address",
        help="The gateway, as scripts written for `ray job` pass it: must be the profile's gateway "
        "(without --profile, the profile for that gateway is used).",
    ),
]
NoWaitOption = Annotated[bool, typer.Option("--no-wait", help="Do not wait for the job to exit.")]
# Accepted for scripts written for `ray job`; raywarden authenticates with the profile instead.
HeadersOption = Annotated[str | None, typer.Option("--headers", hidden=True)]
VerifyOption = Annotated[str | None, typer.Option("--verify", hidden=True)]
LogStyleOption = Annotated[
    str,
    typer.Option("--log-style", help="As `ray job`: 'pretty' (colour), 'record' (plain) or 'auto' (by terminal)."),
]
LogColorOption = Annotated[str, typer.Option("--log-color", help="As `ray job`: 'true', 'false' or 'auto'.")]
VerboseOption = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        help="Also print the profile's CA file and, for submit, the command line as sent.",
    ),
]

job_app = typer.Typer(
    help="Submit and manage Ray jobs through the gateway: a drop-in for `ray job` (same options and exit codes).",
    no_args_is_help=True,
)
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def register(app: typer.Typer) -> None:
    app.add_typer(job_app, name="job")


def _session(
    profile: str | None,
    address: str | None,
    headers: str | None,
    verify: str | None,
    log_style: str,
    log_color: str,
    verbose: int,
    json_output: bool,
) -> JobSession:
    if headers is not None or verify is not None:
        flag = "--headers" if headers is not None else "--verify"
        raise UsageError(
            f"{flag} is for stock `ray job`: raywarden authenticates with your profile",
            hint="drop it (and --verify/--headers); --profile NAME picks another identity",
        )
    _log_options(log_style, log_color)
    session = JobSession.open(profile, address)
    if not json_output:
        err_console.print(
            f"Job submission server address: {session.profile.gateway_url} "
            f"(as {session.profile.identity}, profile '{session.profile.name}')",
            markup=False,
        )
        if verbose:
            err_console.print(f"  access CA: {session.profile.ca_path}", markup=False)
    return session


def _log_options(style: str, color: str) -> None:
    style, color = style.lower(), color.lower()
    if style not in ("auto", "record", "pretty"):
        raise UsageError(f"--log-style {style!r} is not one of auto, record, pretty")
    if color not in ("auto", "true", "false"):
        raise UsageError(f"--log-color {color!r} is not one of auto, true, false")
    if color == "false" or style == "record":
        console.no_color = err_console.no_color = True


@job_app.command("submit")
def submit(
    entrypoint: Annotated[
        list[str] | None,
        typer.Argument(metavar="-- ENTRYPOINT...", help="The job's command, after --.", show_default=False),
    ] = None,
    address: AddressOption = None,
    submission_id: Annotated[
        str | None, typer.Option("--submission-id", help="Submission id for the job (default: one is generated).")
    ] = None,
    job_id: Annotated[str | None, typer.Option("--job-id", hidden=True, help="Deprecated: --submission-id.")] = None,
    runtime_env: Annotated[
        Path | None, typer.Option("--runtime-env", help="Path to a local YAML file holding a runtime_env.")
    ] = None,
    runtime_env_json: Annotated[
        str | None, typer.Option("--runtime-env-json", help='runtime_env as JSON, e.g. \'{"pip": ["requests"]}\'.')
    ] = None,
    working_dir: Annotated[
        str | None,
        typer.Option(
            "--working-dir",
            help="Local folder (uploaded) or remote .zip URI the job runs in; overrides the runtime_env's.",
        ),
    ] = None,
    metadata_json: Annotated[
        str | None, typer.Option("--metadata-json", help="JSON object of string metadata to attach to the job.")
    ] = None,
    entrypoint_num_cpus: Annotated[
        float | None, typer.Option("--entrypoint-num-cpus", help="CPUs reserved for the entrypoint command.")
    ] = None,
    entrypoint_num_gpus: Annotated[
        float | None, typer.Option("--entrypoint-num-gpus", help="GPUs reserved for the entrypoint command.")
    ] = None,
    entrypoint_memory: Annotated[
        int | None, typer.Option("--entrypoint-memory", help="Memory (bytes) reserved for the entrypoint command.")
    ] = None,
    entrypoint_resources: Annotated[
        str | None,
        typer.Option(
            "--entrypoint-resources", help="Custom resources for the entrypoint as JSON, e.g. '{\"tpu\": 1}'."
        ),
    ] = None,
    entrypoint_label_selector: Annotated[
        str | None,
        typer.Option("--entrypoint-label-selector", help="Label selector for the entrypoint's node, as JSON."),
    ] = None,
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="Do not stream logs and wait for the job to exit.")
    ] = False,
    headers: HeadersOption = None,
    verify: VerifyOption = None,
    log_style: LogStyleOption = "auto",
    log_color: LogColorOption = "auto",
    verbose: VerboseOption = 0,
    profile: ProfileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Submit a job: `raywarden job submit [OPTIONS] -- python train.py --epochs 3`.

    Streams the job's logs to stdout until it exits (unless --no-wait); exits 1 if the job FAILED, else 0.
    With --json the logs go to stderr and stdout holds one JSON object.
    """
    command = job_inputs.entrypoint_command(entrypoint)
    env, replaced = job_inputs.runtime_env(runtime_env, runtime_env_json, working_dir)
    meta = job_inputs.metadata(metadata_json)
    resources = job_inputs.resources(entrypoint_resources, "--entrypoint-resources")
    labels = job_inputs.resources(entrypoint_label_selector, "--entrypoint-label-selector")
    job_inputs.amount(entrypoint_num_cpus, "--entrypoint-num-cpus")
    job_inputs.amount(entrypoint_num_gpus, "--entrypoint-num-gpus")
    job_inputs.amount(entrypoint_memory, "--entrypoint-memory")
    if job_id is not None:
        err_console.print("--job-id is deprecated: use --submission-id")
    if replaced:
        err_console.print("Overriding runtime_env working_dir with --working-dir option")
    session = _session(profile, address, headers, verify, log_style, log_color, verbose, json_output)
    if verbose and not json_output:
        err_console.print(f"  entrypoint: {command}", markup=False)
    kwargs: dict[str, Any] = {
        "entrypoint": command,
        "submission_id": submission_id or job_id,
        "runtime_env": env or None,
        "metadata": meta,
        "entrypoint_num_cpus": entrypoint_num_cpus,
        "entrypoint_num_gpus": entrypoint_num_gpus,
        "entrypoint_memory": entrypoint_memory,
        "entrypoint_resources": resources,
    }
    if labels is not None:
        kwargs["entrypoint_label_selector"] = labels
    submitted = str(session.call("submit_job", **kwargs))
    err_console.print(f"[green]Job '{escape(submitted)}' submitted successfully[/]")
    if no_wait:
        if json_output:
            print_json({"submission_id": submitted})
            return
        err_console.print("Next steps:")
        for verb in ("logs", "status", "stop"):
            err_console.print(f"  raywarden job {verb} {submitted}", markup=False)
        console.print(submitted, markup=False)
        return
    err_console.print("Tailing logs until the job exits (disable with --no-wait):")
    session.tail(submitted, to_stderr=json_output)
    info = session.call("get_job_info", submitted)
    status = str(info.status)
    if json_output:
        print_json({"submission_id": submitted, "status": status, "message": info.message})
    else:
        _log_status(submitted, status, info.message)
    if status == "FAILED":
        raise typer.Exit(1)


@job_app.command("status")
def status(
    job_id: JobId,
    address: AddressOption = None,
    headers: HeadersOption = None,
    verify: VerifyOption = None,
    log_style: LogStyleOption = "auto",
    log_color: LogColorOption = "auto",
    verbose: VerboseOption = 0,
    profile: ProfileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show a job's status (exits 0 whatever the status, as `ray job status`)."""
    session = _session(profile, address, headers, verify, log_style, log_color, verbose, json_output)
    row = job_row(session.call("get_job_info", job_id), session.trust_domain)
    if json_output:
        print_json(row)
        return
    _log_status(job_id, row["status"], row["message"], out_console=True)
    shown = {**row, "owner": row.get("owner") or row.get("owner_short")}  # or "(submitted outside the gateway)"
    for key in ("owner", "entrypoint", "start_time", "end_time"):
        if shown.get(key) is not None:
            console.print(f"  {key.replace('_', ' ')}: {shown[key]}", markup=False)


@job_app.command("logs")
def logs(
    job_id: JobId,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow the logs (like `tail -f`).")] = False,
    address: AddressOption = None,
    headers: HeadersOption = None,
    verify: VerifyOption = None,
    log_style: LogStyleOption = "auto",
    log_color: LogColorOption = "auto",
    verbose: VerboseOption = 0,
    profile: ProfileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Print a job's logs; --follow streams them until the job exits, then prints its status."""
    session = _session(profile, address, headers, verify, log_style, log_color, verbose, json_output)
    if not follow:
        text = str(session.call("get_job_logs", job_id))
        if json_output:
            print_json({"submission_id": job_id, "logs": text})
        else:
            typer.echo(text, nl=False)
        return
    collected = session.tail(job_id, collect=json_output)
    info = session.call("get_job_info", job_id)
    if json_output:
        print_json({"submission_id": job_id, "logs": collected, "status": str(info.status)})
    else:
        _log_status(job_id, str(info.status), info.message)


@job_app.command("stop")
def stop(
    job_id: JobId,
    no_wait: NoWaitOption = False,
    address: AddressOption = None,
    headers: HeadersOption = None,
    verify: VerifyOption = None,
    log_style: LogStyleOption = "auto",
    log_color: LogColorOption = "auto",
    verbose: VerboseOption = 0,
    profile: ProfileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Ask Ray to stop a job, then wait for it to exit (unless --no-wait)."""
    session = _session(profile, address, headers, verify, log_style, log_color, verbose, json_output)
    out = err_console if json_output else console
    out.print(f"Attempting to stop job '{escape(job_id)}'")
    requested = bool(session.call("stop_job", job_id))
    result: dict[str, Any] = {"submission_id": job_id, "stop_requested": requested}
    if not no_wait:
        out.print(f"Waiting for job '{escape(job_id)}' to exit (disable with --no-wait):")
        while (current := str(session.call("get_job_status", job_id))) not in TERMINAL:
            out.print(f"Job has not exited yet. Status: {current}")
            time.sleep(1)
        info = session.call("get_job_info", job_id)
        result["status"] = str(info.status)
        if not json_output:
            _log_status(job_id, str(info.status), info.message, out_console=True)
    if json_output:
        print_json(result)


@job_app.command("delete")
def delete(
    job_id: JobId,
    address: AddressOption = None,
    headers: HeadersOption = None,
    verify: VerifyOption = None,
    log_style: LogStyleOption = "auto",
    log_color: LogColorOption = "auto",
    verbose: VerboseOption = 0,
    profile: ProfileOption = None,
    json_output: JsonOption = False,
) -> None:
    """Delete a job that has ended, with its record (Ray refuses to delete a running job)."""
    session = _session(profile, address, headers, verify, log_style, log_color, verbose, json_output)
    deleted = bool(session.call("delete_job", job_id))
    if json_output:
        print_json({"submission_id": job_id, "deleted": deleted})
    else:
        console.print(f"Job '{escape(job_id)}' deleted successfully")


@job_app.command("list")
def list_jobs(
    address: AddressOption = None,
    headers: HeadersOption = None,
    verify: VerifyOption = None,
    log_style: LogStyleOption = "auto",
    log_color: LogColorOption = "auto",
    verbose: VerboseOption = 0,
    profile: ProfileOption = None,
    wide: WideOption = False,
    json_output: JsonOption = False,
) -> None:
    """List the jobs you may see (ids and owners in full; --wide keeps each job on one line)."""
    session = _session(profile, address, headers, verify, log_style, log_color, verbose, json_output)
    rows = [job_row(j, session.trust_domain) for j in session.call("list_jobs")]
    rows.sort(key=lambda r: r["start_time"] or 0)
    if json_output:
        print_json(rows)
        return
    if not rows:
        err_console.print("No jobs you may see.")
        return
    lines = [
        [
            escape(row["submission_id"] or f"(driver {row['job_id']})"),
            escape(row["status"]),
            escape(row["owner_short"] or "-"),
            escape(row["entrypoint"] or ""),
        ]
        for row in rows
    ]
    print_rows(("submission id", "status", "owner", "entrypoint"), lines, wrap=("entrypoint",), wide=wide)


def _log_status(job_id: str, status: str, message: str | None, *, out_console: bool = False) -> None:
    """The lines `ray job` prints for a job's status (`_log_job_status` in Ray's CLI)."""
    out = console if out_console else err_console
    name = escape(job_id)
    if status == "SUCCEEDED":
        out.print(f"[green]Job '{name}' succeeded[/]")
    elif status == "STOPPED":
        out.print(f"[yellow]Job '{name}' was stopped[/]")
    elif status == "FAILED":
        out.print(f"[red]Job '{name}' failed[/]")
    else:
        out.print(f"Status for job '{name}': {escape(status)}")
    if message and status != "SUCCEEDED" and status != "STOPPED":
        out.print(f"Status message: {message}", markup=False)
