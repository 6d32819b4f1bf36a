"""`raywarden policy`: validate, test, explain and reload the Cedar policy set."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from raywarden.audit.cluster import open_cluster_audit
from raywarden.audit.reader import RecordFilter, iter_records, last_records
from raywarden.cli.common import JsonOption, StateDirOption, console, err_console, print_json, state_dir
from raywarden.cluster.procs import alive
from raywarden.cluster.runstate import read_run_state
from raywarden.config import ClusterConfig
from raywarden.errors import ClusterError, PolicyError, UsageError
from raywarden.identity.names import principal_kind, principal_name
from raywarden.policy.cases import (
    Case,
    CaseContext,
    build_request,
    config_with_limits,
    load_cases,
    run_cases,
)
from raywarden.policy.engine import Entity, PolicyEngine, PolicyRequest, policy_files
from raywarden.policy.entities import cluster_entity, principal_entity
from raywarden.policy.explain import Explanation
from raywarden.policy.jobattrs import runtime_env_attrs, runtime_env_facts
from raywarden.state import StateDir

policy_app = typer.Typer(
    name="policy", help="Validate, test, explain and reload the Cedar policies.", no_args_is_help=True
)

DirOption = Annotated[
    Path | None,
    typer.Option(
        "--dir", help="Operator policy dir (default: the state dir's policies/), loaded after the default pack."
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(policy_app, name="policy")


def _config(state: StateDir) -> ClusterConfig | None:
    return state.load_config() if state.exists() else None


def _engine(state: StateDir, directory: Path | None, config: ClusterConfig | None = None) -> PolicyEngine:
    if directory is not None and not directory.is_dir():
        raise UsageError(f"{directory} is not a folder")
    folder = directory if directory is not None else (state.policy_dir if state.exists() else None)
    return PolicyEngine.load(folder, cluster_entity(config or _config(state)))


def _trust_domain(state: StateDir) -> str:
    config = _config(state)
    return config.trust_domain if config else ClusterConfig().trust_domain


@policy_app.command("validate")
def validate_command(
    directory: Annotated[
        Path | None,
        typer.Argument(help="Operator policy dir to check (default: the state dir's policies/).", show_default=False),
    ] = None,
    state_opt: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Parse the default pack plus DIR and validate every policy against the schema; print the policy ids."""
    engine = _engine(state_dir(state_opt), directory)
    summary = {
        "valid": True,
        "version": engine.version,
        "sources": list(engine.sources),
        "policies": [{"id": p.id, "effect": p.effect, "source": p.source, "line": p.line} for p in engine.policies],
    }
    if json_output:
        print_json(summary)
        return
    console.print(
        f"[green]valid[/]: {len(engine.policies)} policies from {len(engine.sources)} files, version {engine.version}"
    )
    for info in engine.policies:
        console.print(f"  {info.effect:7} {escape(info.id)}  ({escape(info.where)})")


@policy_app.command("test")
def test_command(
    cases_path: Annotated[Path, typer.Argument(metavar="CASES.yaml", help="Test cases (docs/policy.md).")],
    directory: DirOption = None,
    state_opt: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Run each case (principal, groups, action, resource -> expected decision); exit 1 on any mismatch."""
    state = state_dir(state_opt)
    cases = load_cases(cases_path)
    config = config_with_limits(_config(state), cases.limits)
    engine = _engine(state, directory, config)
    results = run_cases(engine, cases, config.trust_domain)
    failed = [r for r in results if not r.passed]
    if json_output:
        print_json(
            {
                "version": engine.version,
                "passed": len(results) - len(failed),
                "failed": len(failed),
                "results": [r.as_dict() for r in results],
            }
        )
    else:
        for result in results:
            row = result.as_dict()
            mark = "[green]PASS[/]" if result.passed else "[red]FAIL[/]"
            console.print(f"{mark} {escape(row['name'])}: {row['decision']} {escape(str(row['policy_ids']))}")
            for problem in result.problems:
                console.print(f"     {escape(problem)}")
        console.print(f"{len(results) - len(failed)} passed, {len(failed)} failed (policy version {engine.version})")
    if failed:
        raise typer.Exit(1)


@policy_app.command("explain")
def explain_command(
    request_id: Annotated[
        str | None,
        typer.Option(
            "--request-id", help="Replay the decision of this audit record (its request_id) against the current set."
        ),
    ] = None,
    principal: Annotated[str | None, typer.Option(help="Principal name or SPIFFE ID.")] = None,
    kind: Annotated[str, typer.Option(help="user or sa.")] = "user",
    group: Annotated[list[str] | None, typer.Option("--group", help="A group of the principal (repeatable).")] = None,
    action: Annotated[str | None, typer.Option(help="The action, e.g. jobs.submit or jobs.stop.")] = None,
    resource_json: Annotated[
        str | None,
        typer.Option(
            "--resource-json",
            help="Resource attributes as JSON: the submission body for jobs.submit; owner/status/... for a job.",
        ),
    ] = None,
    owner: Annotated[str | None, typer.Option(help="Owner of the job (name or SPIFFE ID).")] = None,
    auth_method: Annotated[str, typer.Option(help="certificate, token or oidc.")] = "certificate",
    source: Annotated[str, typer.Option(help="Source address of the request.")] = "127.0.0.1",
    auth_age: Annotated[float, typer.Option("--auth-age", help="Seconds since the credential was issued.")] = 60.0,
    directory: DirOption = None,
    state_opt: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Show the decision for a request, the policies that made it and, for a refusal, why: each permit that
    could have applied and which of its conditions failed, with the offending values.

    Describe the request with --principal/--group/--action/--resource-json, or name an audit record with
    --request-id."""
    state = state_dir(state_opt)
    engine = _engine(state, directory)
    recorded: dict[str, Any] | None = None
    if request_id is not None:
        recorded = _find_request(state, request_id)
        request = _request_from_record(recorded)
    else:
        if principal is None or action is None:
            raise UsageError("name the request", hint="give --principal and --action, or --request-id")
        try:
            attrs = json.loads(resource_json) if resource_json else {}
        except json.JSONDecodeError as exc:
            raise UsageError(f"--resource-json is not JSON: {exc}") from None
        if not isinstance(attrs, dict):
            raise UsageError("--resource-json must be a JSON object")
        if owner is not None:
            attrs["owner"] = owner
        case = Case(
            principal=principal,
            kind=kind,
            groups=group or [],
            action=action,
            resource=attrs,
            context=CaseContext(auth_method=auth_method, source=source, auth_age_s=auth_age),
            expect="deny",
        )
        request = build_request(case, _trust_domain(state))
    explanation = engine.explain(request)
    decision = explanation.decision
    out: dict[str, Any] = {
        "decision": "allow" if decision.allowed else "deny",
        "reason": decision.reason,
        "summary": explanation.summary(),
        "policy_ids": list(decision.policy_ids),
        "policies": [
            {"id": c.id, "source": c.where.rsplit(":", 1)[0], "where": c.where, "effect": c.effect}
            for c in explanation.determining
        ],
        "policy_version": engine.version,
        "principal": request.principal.id,
        "groups": [g for _, g in request.principal.parents],
        "action": request.action,
        "resource": f"{request.resource.type}::{request.resource.id}",
        "resource_attrs": request.resource.attrs,
        "candidates": [c.as_dict() for c in explanation.candidates],
        "out_of_scope": [c.as_dict() for c in explanation.out_of_scope],
    }
    if recorded is not None:
        out["recorded"] = {
            "decision": recorded.get("decision"),
            "policy_ids": recorded.get("policy_ids"),
            "policy_version": recorded.get("policy_version"),
            "time": recorded.get("time"),
        }
    if json_output:
        print_json(out)
        return
    colour = "green" if decision.allowed else "red"
    console.print(f"[{colour}]{out['decision']}[/]: {escape(decision.reason)}")
    _print_explanation(explanation)
    console.print(
        f"policy version {engine.version}; {escape(out['principal'])} {escape(str(out['groups']))} "
        f"{out['action']} {escape(out['resource'])}"
    )
    if recorded is not None:
        console.print(
            f"recorded at {recorded.get('time')}: {recorded.get('decision')} "
            f"{recorded.get('policy_ids')} under version {recorded.get('policy_version')}"
        )


def _print_explanation(explanation: Explanation) -> None:
    for check in explanation.determining:
        console.print(f"  {check.effect} {escape(check.id)} ({escape(check.where)})")
    for check in explanation.candidates:
        console.print(f"  permit {escape(check.id)} ({escape(check.where)}) admits this request, but:")
        for condition in check.conditions:
            mark = {"held": "[green]held[/]   ", "failed": "[red]failed[/] ", "error": "[red]error[/]  "}.get(
                condition.outcome, "skipped"
            )
            text = f"unless {condition.text}" if condition.kind == "unless" else condition.text
            console.print(f"    {mark} {escape(text)}")
            if condition.detail or condition.error:
                console.print(f"           [bold]{escape(condition.detail or condition.error)}[/]")
    for check in explanation.out_of_scope:
        console.print(
            f"  permit {escape(check.id)} ({escape(check.where)}) does not apply: "
            f"{escape(check.scope_text or check.scope)} does not hold"
        )


def _find_request(state: StateDir, request_id: str) -> dict[str, Any]:
    state.require()
    for _, record in iter_records(state.audit_dir, RecordFilter()):
        if record.get("kind") == "request" and record.get("request_id") == request_id:
            return record
    raise UsageError(
        f"no request {request_id} in the audit log", hint="`raywarden audit tail` shows recent request ids"
    )


def _request_from_record(record: dict[str, Any]) -> PolicyRequest:
    principal_id, action, resource = record.get("principal"), record.get("action"), record.get("resource")
    data = record.get("policy_input")
    if (
        not isinstance(principal_id, str)
        or not isinstance(action, str)
        or not isinstance(resource, str)
        or not isinstance(data, dict)
    ):
        raise UsageError(
            f"audit record {record.get('request_id')} holds no policy decision to replay",
            hint="requests refused before the decision (401, unknown routes) have none",
        )
    kind = principal_kind(principal_id)
    principal = principal_entity(principal_id, kind, principal_name(principal_id), tuple(data["groups"]))
    rtype, _, rid = resource.partition("::")
    parents = () if rtype == "Cluster" else (("Cluster", "ray"),)
    attrs = dict(data.get("resource_attrs") or {})
    env = attrs.get("runtime_env")
    if rtype == "NewJob" and isinstance(env, dict) and "runtime_env_facts" not in attrs:
        # Recorded before submissions carried the flat copies of their runtime_env (policy/jobattrs.py).
        attrs["runtime_env_facts"] = runtime_env_facts({**runtime_env_attrs(None), **env})
        attrs["env_var_prefixes"] = env.get("env_var_prefixes", [])
    context = dict(data.get("context") or {})
    context["source"] = {"__extn": {"fn": "ip", "arg": _address(str(context.get("source_ip", "")))}}
    return PolicyRequest(principal, action, Entity(rtype, rid, attrs, parents), context)


def _address(text: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return "0.0.0.0"  # noqa: S104 - as the gateway does for an unparseable source


@policy_app.command("reload")
def reload_command(
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the gateway to confirm.")] = 15.0,
    state_opt: StateDirOption = None,
    json_output: JsonOption = False,
) -> None:
    """Ask the running gateway to load the policy dir again (SIGHUP) and report whether it accepted it.

    A set that does not parse or validate is refused by the gateway, which keeps the old one in force."""
    state = state_dir(state_opt).require()
    run = read_run_state(state)
    if run is None or not alive(run.gateway_pid):
        raise ClusterError("the gateway is not running", hint="start the cluster with `raywarden up`")
    audit = open_cluster_audit(state)
    try:
        audit.append(
            {
                "kind": "policy",
                "event": "reload_requested",
                "actor": f"local:{os.getuid()}",
                "gateway_pid": run.gateway_pid,
                "files": [n for n, _ in policy_files(state.policy_dir)],
            }
        )
    finally:
        audit.close()
    before = last_records(state.audit_dir, RecordFilter(), 1)
    after_seq = before[0][1].get("seq", -1) if before else -1
    os.kill(run.gateway_pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for _, record in last_records(state.audit_dir, RecordFilter(), 50):
            if record.get("seq", -1) > after_seq and record.get("kind") == "policy" and record.get("event") == "reload":
                _report_reload(record, json_output)
                return
        time.sleep(0.2)
    raise ClusterError(
        f"the gateway did not confirm the reload within {timeout:g}s",
        hint=f"see {state.logs_dir / 'gateway.log'} and `raywarden audit tail`",
    )


def _report_reload(record: dict[str, Any], json_output: bool) -> None:
    if record.get("accepted"):
        if json_output:
            print_json({"accepted": True, "version": record.get("version")})
        else:
            console.print(f"[green]reloaded[/]: policy version {record.get('version')} is in force")
        return
    reason = str(record.get("reason"))
    if json_output:
        print_json({"accepted": False, "reason": reason, "version": record.get("version")})
    else:
        err_console.print(f"gateway kept policy version {record.get('version')}")
    raise PolicyError(
        f"the gateway refused the new policy set: {reason}",
        hint="fix it (`raywarden policy validate` shows the problem) and reload again",
    )
