"""Stock `ray job` and `raywarden job`, side by side against one gateway: every subcommand, same exit codes,
same quoting, same job on the cluster, the same words for what happened.

Stock Ray reaches the gateway as a user would: `--address https://GATEWAY --headers '{"Authorization":
"Bearer TOKEN"}' --verify CA`, with the token from `raywarden token` of the same person.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ray.job_submission import JobSubmissionClient

from tests.support import Cluster, run_cli

pytestmark = pytest.mark.integration

RAY = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
# Ray's CLI logger prefixes lines in record style: "2026-01-01 10:00:00,123\tINFO cli.py:42 -- ".
_RECORD_PREFIX = re.compile(r"^\S+ \S+\t[A-Z]+ \S+ -- ")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


@dataclass
class Person:
    cluster: Cluster
    home: Path
    workdir: Path
    _token: str | None = None

    @property
    def ca(self) -> str:
        return str(self.home / "profiles" / "parity" / "access-ca.crt")

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_", "RAYWARDEN_"))}
        env["RAYWARDEN_HOME"] = str(self.home)
        env["RAYWARDEN_STATE_DIR"] = str(self.home / "no-cluster-here")
        env["COLUMNS"] = "80"
        return env

    def raywarden(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "raywarden.cli.main", "job", *args],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def token(self) -> str:
        """One bearer token for the module, as a person would keep one in a shell variable."""
        if self._token is None:
            self._token = self._new_token()
        return self._token

    def _new_token(self) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "raywarden.cli.main", "token", "--ttl", "1h"],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return result.stdout.strip()

    def stock(self, sub: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        common = ["--address", self.cluster.url, "--headers", json.dumps({"Authorization": f"Bearer {self.token()}"})]
        common += ["--verify", self.ca]
        words = list(args)
        rest: list[str] = []
        if "--" in words:
            at = words.index("--")
            words, rest = words[:at], words[at:]
        return subprocess.run(
            [RAY, "job", sub, *words, *common, *rest],
            env=self.env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def sdk(self) -> JobSubmissionClient:
        return JobSubmissionClient(
            self.cluster.url, headers={"Authorization": f"Bearer {self.token()}"}, verify=self.ca
        )


@pytest.fixture(scope="module")
def person(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Person]:
    """A developer who logged in on their own machine (not the admin: refusals are real)."""
    home = tmp_path_factory.mktemp("parity-home")
    workdir = tmp_path_factory.mktemp("parity-work")
    added = json.loads(
        run_cli(cluster, "user", "add", "parity-dev", "--group", "developers", "--json", check=True).stdout
    )
    who = Person(cluster, home, workdir)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "raywarden.cli.main",
            "login",
            cluster.url,
            "--code",
            added["code"],
            "--ca-fingerprint",
            added["ca_fingerprint"],
            "--profile",
            "parity",
        ],
        env=who.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    yield who
    run_cli(cluster, "user", "disable", "parity-dev")


def plain(text: str) -> str:
    """Output without Ray's record prefixes and colours, for comparing words."""
    return "\n".join(_RECORD_PREFIX.sub("", _ANSI.sub("", line)) for line in text.splitlines())


def submission_id(text: str) -> str:
    found = re.search(r"Job '(raysubmit_[A-Za-z0-9]+|[A-Za-z0-9_.-]+)' submitted successfully", plain(text))
    assert found, text
    return found.group(1)


def wait_terminal(person: Person, job_id: str) -> str:
    client = person.sdk()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id))
        if status in TERMINAL:
            return status
        time.sleep(0.5)
    raise AssertionError(f"{job_id} did not end")


# -- submit ------------------------------------------------------------------------------------------------

QUOTED = ["python", "-c", "import sys; print('parity', sys.argv[1:])", "a b", "c'd", '"e"', "$HOME", "#f"]


def test_submit_quotes_the_words_after_double_dash_the_same(person: Person) -> None:
    stock = person.stock("submit", "--", *QUOTED)
    ours = person.raywarden("submit", "--", *QUOTED)
    expected = "parity ['a b', \"c'd\", '\"e\"', '$HOME', '#f']"
    assert stock.returncode == 0 == ours.returncode, stock.stdout + stock.stderr + ours.stderr
    assert expected in stock.stdout and expected in ours.stdout
    for result in (stock, ours):
        words = plain(result.stdout + result.stderr)
        assert "submitted successfully" in words and "succeeded" in words
    jobs = {j.submission_id: j for j in person.sdk().list_jobs()}
    assert jobs[submission_id(stock.stdout)].entrypoint == jobs[submission_id(ours.stderr)].entrypoint


def test_a_failed_job_exits_1_in_both(person: Person) -> None:
    script = ["python", "-c", "import sys; print('going down'); sys.exit(3)"]
    stock = person.stock("submit", "--", *script)
    ours = person.raywarden("submit", "--", *script)
    assert stock.returncode == 1 == ours.returncode
    assert "going down" in stock.stdout and "going down" in ours.stdout
    assert "failed" in plain(stock.stdout) and "failed" in plain(ours.stderr)


def test_no_wait_with_every_submit_option_makes_the_same_job(person: Person) -> None:
    code = person.workdir / "code"
    code.mkdir(exist_ok=True)
    (code / "main.py").write_text("import os, sys\nprint('cwd has', sorted(os.listdir('.')), os.environ['PARITY'])\n")
    (person.workdir / "env.yaml").write_text("env_vars:\n  PARITY: 'yes'\n")
    options = [
        "--runtime-env",
        "env.yaml",
        "--working-dir",
        "code",
        "--metadata-json",
        '{"run": "parity"}',
        "--entrypoint-num-cpus",
        "0.5",
        "--entrypoint-memory",
        "1000000",
        "--entrypoint-resources",
        "{}",
        "--no-wait",
    ]
    stock = person.stock("submit", "--submission-id", "parity-stock-1", *options, "--", "python", "main.py")
    ours = person.raywarden("submit", "--submission-id", "parity-ours-1", *options, "--", "python", "main.py")
    assert stock.returncode == 0 == ours.returncode, stock.stdout + stock.stderr + ours.stderr
    assert "Job 'parity-stock-1' submitted successfully" in plain(stock.stdout)
    assert "Job 'parity-ours-1' submitted successfully" in ours.stderr and ours.stdout.strip() == "parity-ours-1"
    client = person.sdk()
    a, b = client.get_job_info("parity-stock-1"), client.get_job_info("parity-ours-1")
    assert a.entrypoint == b.entrypoint == "python main.py"
    assert a.runtime_env == b.runtime_env  # same files: the same uploaded package
    assert a.runtime_env is not None and a.runtime_env["env_vars"] == {"PARITY": "yes"}
    assert str(a.runtime_env["working_dir"]).startswith("gcs://")
    assert (a.metadata or {}).get("run") == (b.metadata or {}).get("run") == "parity"
    # What the gateway decided on (Ray's job list leaves out the entrypoint resources): the same request.
    seen = {
        r["policy_input"]["resource_attrs"]["submission_id"]: r["policy_input"]["resource_attrs"]
        for r in person.cluster.audit_records()
        if r.get("action") == "jobs.submit" and r.get("decision") == "allow" and "policy_input" in r
    }
    stock_attrs, our_attrs = dict(seen["parity-stock-1"]), dict(seen["parity-ours-1"])
    stock_attrs.pop("submission_id"), our_attrs.pop("submission_id")
    assert stock_attrs == our_attrs
    assert stock_attrs["entrypoint_milli_cpus"] == 500 and stock_attrs["entrypoint_memory"] == 1000000
    for job in ("parity-stock-1", "parity-ours-1"):
        assert wait_terminal(person, job) == "SUCCEEDED"
        assert "cwd has ['main.py'] yes" in client.get_job_logs(job)


# -- status, logs, list ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished(person: Person) -> str:
    result = person.raywarden(
        "submit", "--submission-id", "parity-done", "--", "python", "-c", "print('line one'); print('line two')"
    )
    assert result.returncode == 0, result.stderr
    return "parity-done"


def test_status(person: Person, finished: str) -> None:
    stock, ours = person.stock("status", finished), person.raywarden("status", finished)
    assert stock.returncode == 0 == ours.returncode
    assert f"Job '{finished}' succeeded" in plain(stock.stdout)
    assert f"Job '{finished}' succeeded" in ours.stdout
    row = json.loads(person.raywarden("status", finished, "--json").stdout)
    assert row["status"] == "SUCCEEDED" and row["owner"].endswith("/user/parity-dev")


def test_logs_and_logs_follow(person: Person, finished: str) -> None:
    stock, ours = person.stock("logs", finished), person.raywarden("logs", finished)
    assert stock.returncode == 0 == ours.returncode
    assert "line one\nline two" in ours.stdout and ours.stdout.strip() in plain(stock.stdout)
    stock, ours = person.stock("logs", finished, "--follow"), person.raywarden("logs", finished, "-f")
    assert stock.returncode == 0 == ours.returncode
    assert "line two" in stock.stdout and "line two" in ours.stdout
    assert f"Job '{finished}' succeeded" in plain(stock.stdout) and f"Job '{finished}' succeeded" in ours.stderr
    followed = json.loads(person.raywarden("logs", finished, "--follow", "--json").stdout)
    assert followed["status"] == "SUCCEEDED" and "line two" in followed["logs"]


def test_list_shows_the_same_jobs_with_ids_whole(person: Person, finished: str) -> None:
    stock, ours = person.stock("list"), person.raywarden("list")
    assert stock.returncode == 0 == ours.returncode
    ours_json = json.loads(person.raywarden("list", "--json").stdout)
    ids = {j["submission_id"] for j in ours_json if j["submission_id"]}
    assert finished in ids
    for job_id in ids:
        assert f"submission_id='{job_id}'" in stock.stdout
        assert any(job_id in line for line in ours.stdout.splitlines())  # never cut, even at 80 columns
    assert all(j["owner"].endswith("/user/parity-dev") for j in ours_json)  # a developer sees their own


# -- stop and delete ---------------------------------------------------------------------------------------


def test_stop_waits_for_the_job_to_end_and_delete_removes_it(person: Person) -> None:
    for name, run in (("stock", person.stock), ("ours", person.raywarden)):
        job = f"parity-stop-{name}"
        submitted = run("submit", "--submission-id", job, "--no-wait", "--", "sleep", "600")
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        stopped = run("stop", job)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"Attempting to stop job '{job}'" in plain(stopped.stdout)
        assert f"Job '{job}' was stopped" in plain(stopped.stdout)
        assert str(person.sdk().get_job_status(job)) == "STOPPED"  # `stop` waited for it
        deleted = run("delete", job)
        assert deleted.returncode == 0 and f"Job '{job}' deleted successfully" in plain(deleted.stdout)
        assert job not in {j.submission_id for j in person.sdk().list_jobs()}


def test_a_stopped_job_exits_0_from_submit_in_both(person: Person) -> None:
    """`ray job submit` exits 1 only for FAILED: a job stopped while it is followed exits 0."""
    for name in ("stock", "ours"):
        job = f"parity-stopped-{name}"
        words = ["submit", "--submission-id", job, "--", "sleep", "600"]
        if name == "stock":
            common = ["--address", person.cluster.url, "--verify", person.ca]
            common += ["--headers", json.dumps({"Authorization": f"Bearer {person.token()}"})]
            argv = [RAY, "job", *words[:3], *common, *words[3:]]
        else:
            argv = [sys.executable, "-m", "raywarden.cli.main", "job", *words]
        with subprocess.Popen(
            argv, env=person.env(), cwd=person.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as follower:
            client = person.sdk()
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if (
                    job in {j.submission_id for j in client.list_jobs()}
                    and str(client.get_job_status(job)) == "RUNNING"
                ):
                    break
                time.sleep(0.5)
            client.stop_job(job)
            out, err = follower.communicate(timeout=180)
        assert follower.returncode == 0, (name, out, err)
        assert f"Job '{job}' was stopped" in plain(out + err), (name, out, err)


# -- refusals ----------------------------------------------------------------------------------------------

FORBIDDEN_ENV = '{"pip": ["--index-url https://pypi.evil.example/simple", "requests"]}'


def test_a_policy_refusal_is_explained_to_both(person: Person) -> None:
    before = {j.submission_id for j in person.sdk().list_jobs()}
    stock = person.stock("submit", "--runtime-env-json", FORBIDDEN_ENV, "--", "true")
    ours = person.raywarden("submit", "--runtime-env-json", FORBIDDEN_ENV, "--", "true")
    assert stock.returncode == 1 == ours.returncode
    ids = [
        r["request_id"] for r in person.cluster.audit_records() if r.get("status") == 403 and r["kind"] == "request"
    ][-2:]
    stock_id, ours_id = ids
    assert stock_id in stock.stdout + stock.stderr  # stock Ray shows the gateway's body, request id included
    assert "Traceback" not in ours.stderr
    assert "gateway answered 403" in ours.stderr and f"request id: {ours_id}" in ours.stderr
    assert "hint:" in ours.stderr
    assert "RAY_AUTH_MODE" not in ours.stderr and "get-auth-token" not in ours.stderr
    assert {j.submission_id for j in person.sdk().list_jobs()} == before


def test_an_unknown_job_is_a_404_with_a_hint_in_both(person: Person) -> None:
    stock = person.stock("status", "raysubmit_doesnotexist")
    ours = person.raywarden("status", "raysubmit_doesnotexist")
    assert stock.returncode == 1 == ours.returncode
    assert "404" in stock.stderr and "gateway answered 404" in ours.stderr and "request id:" in ours.stderr
    assert "Traceback" not in ours.stderr and "hint:" in ours.stderr


def test_someone_elses_job_is_not_there(person: Person, cluster: Cluster) -> None:
    admins = run_cli(cluster, "job", "submit", "--no-wait", "--json", "--", "sleep", "1", check=True)
    job = json.loads(admins.stdout)["submission_id"]
    for verb in ("status", "logs", "stop", "delete"):
        ours = person.raywarden(verb, job)
        assert ours.returncode == 1 and "gateway answered 404" in ours.stderr, (verb, ours.stderr)
        stock = person.stock(verb, job)
        assert stock.returncode == 1 and "404" in stock.stdout + stock.stderr, verb
    # The log stream's WebSocket handshake is refused too, and the reason is fetched for the user.
    ours = person.raywarden("logs", job, "--follow")
    assert ours.returncode == 1 and "gateway answered 404" in ours.stderr and "request id:" in ours.stderr
