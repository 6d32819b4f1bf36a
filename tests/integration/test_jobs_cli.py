"""Jobs through the gateway with the raywarden CLI, against a real Ray cluster."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support import Cluster, run_cli

pytestmark = pytest.mark.integration
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_submit_runs_ray_tasks_and_streams_logs(cluster: Cluster) -> None:
    script = (
        "import ray; ray.init(); print('sum', sum(ray.get([ray.remote(lambda x: x * 2).remote(i) for i in range(5)])))"
    )
    result = run_cli(cluster, "job", "submit", "--", "python", "-c", script)
    assert result.returncode == 0, result.stderr
    assert "sum 20" in result.stdout
    assert "succeeded" in result.stderr


def test_quotes_in_the_command_reach_the_job_as_typed(cluster: Cluster) -> None:
    """The example from the issue: `raywarden job submit -- python -c "print('hello')"`."""
    result = run_cli(cluster, "job", "submit", "--", "python", "-c", "print('hello')")
    assert result.returncode == 0, result.stderr
    assert "hello" in result.stdout.splitlines()


def test_submit_with_working_dir(cluster: Cluster) -> None:
    result = run_cli(cluster, "job", "submit", "--working-dir", str(EXAMPLES), "--", "python", "hello_ray.py")
    assert result.returncode == 0, result.stderr
    assert "squares: [0, 1, 4, 9, 16, 25, 36, 49]" in result.stdout
    assert "through the raywarden gateway" in result.stdout


def test_failed_job_gives_non_zero_exit(cluster: Cluster) -> None:
    result = run_cli(cluster, "job", "submit", "--", "python", "-c", "import sys; sys.exit(3)")
    assert result.returncode == 1
    assert "failed" in result.stderr


def test_json_keeps_stdout_machine_readable(cluster: Cluster) -> None:
    result = run_cli(cluster, "job", "submit", "--json", "--", "python", "-c", "print('to stderr')")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["status"] == "SUCCEEDED" and "to stderr" in result.stderr


def test_job_lifecycle_commands(cluster: Cluster) -> None:
    submitted = run_cli(cluster, "job", "submit", "--no-wait", "--json", "--", "sleep", "600", check=True)
    job_id = json.loads(submitted.stdout)["submission_id"]
    listed = json.loads(run_cli(cluster, "job", "list", "--json", check=True).stdout)
    mine = [j for j in listed if j["submission_id"] == job_id]
    assert mine and mine[0]["owner"] == "spiffe://test.raywarden/user/admin"
    status = json.loads(run_cli(cluster, "job", "status", job_id, "--json", check=True).stdout)
    assert status["status"] in ("PENDING", "RUNNING")
    stopped = json.loads(run_cli(cluster, "job", "stop", job_id, "--json", check=True).stdout)
    assert stopped["stop_requested"] is True
    run_cli(cluster, "job", "logs", job_id, check=True)
    _wait_terminal(cluster, job_id)
    deleted = json.loads(run_cli(cluster, "job", "delete", job_id, "--json", check=True).stdout)
    assert deleted["deleted"] is True
    assert job_id not in {j.get("submission_id") for j in cluster.ray_jobs()}


def test_logs_follow_streams_until_the_job_ends(cluster: Cluster) -> None:
    submitted = run_cli(
        cluster,
        "job",
        "submit",
        "--no-wait",
        "--json",
        "--",
        "python",
        "-c",
        "print('first'); import time; time.sleep(2); print('second')",
        check=True,
    )
    job_id = json.loads(submitted.stdout)["submission_id"]
    followed = run_cli(cluster, "job", "logs", job_id, "--follow", check=True)
    assert "first" in followed.stdout and "second" in followed.stdout


def test_unknown_job_gives_clear_error(cluster: Cluster) -> None:
    result = run_cli(cluster, "job", "status", "raysubmit_doesnotexist")
    assert result.returncode == 1
    assert "error: gateway answered 404" in result.stderr and "Traceback" not in result.stderr
    assert "request id: " in result.stderr and "hint:" in result.stderr


def test_bad_input_is_refused_with_hint(cluster: Cluster) -> None:
    jobs_before = len(cluster.ray_jobs())
    result = run_cli(cluster, "job", "submit", "--runtime-env-json", "{not json", "--", "echo", "x")
    assert result.returncode == 2 and "not valid JSON" in result.stderr and "hint:" in result.stderr
    result = run_cli(cluster, "job", "submit")
    assert result.returncode == 2 and "no entrypoint" in result.stderr
    result = run_cli(cluster, "job", "submit", "--workdir", "examples", "--", "python", "hello_ray.py")
    assert result.returncode == 2 and "No such option: --workdir" in result.stderr and "--working-dir" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2
    assert len(cluster.ray_jobs()) == jobs_before


def _wait_terminal(cluster: Cluster, job_id: str) -> None:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        status = json.loads(run_cli(cluster, "job", "status", job_id, "--json", check=True).stdout)["status"]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish")
