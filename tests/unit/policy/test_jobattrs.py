"""What a submission's runtime_env looks like to policies."""

from __future__ import annotations

import pytest

from raywarden.policy.jobattrs import job_attrs, milli, runtime_env_attrs, submission_attrs

pytestmark = pytest.mark.unit


def test_plain_requirements_are_normalised_names() -> None:
    attrs = runtime_env_attrs({"pip": ["Requests_OAuthlib==1.0", "numpy; python_version>'3'", "# comment", ""]})
    assert attrs["pip_packages"] == ["numpy", "requests-oauthlib"]
    assert attrs["pip_options"] == [] and attrs["pip_direct_refs"] == []


@pytest.mark.parametrize(
    ("entry", "option", "ref"),
    [
        ("--index-url https://e/simple", "--index-url", "https://e/simple"),
        ("--index-url=https://e/simple", "--index-url", None),
        ("-ihttps://e/simple", "-i", None),
        ("requests\n--extra-index-url https://e", "--extra-index-url", "https://e"),
        ("-f ./wheels", "-f", "./wheels"),
        ("--trusted-host e.example", "--trusted-host", "e.example"),
    ],
)
def test_options_inside_the_package_list_are_found(entry: str, option: str, ref: str | None) -> None:
    attrs = runtime_env_attrs({"pip": [entry]})
    assert option in attrs["pip_options"]
    if ref:
        assert ref in attrs["pip_direct_refs"]


def test_sources_and_files() -> None:
    attrs = runtime_env_attrs(
        {
            "working_dir": "gcs://_ray_pkg_a.zip",
            "py_modules": ["s3://b/m.zip", "/opt/x"],
            "env_vars": {"PIP_INDEX_URL": "v", "http_proxy": "v", "PYTHONPATH": "v"},
        }
    )
    assert attrs["uri_schemes"] == ["gcs", "local", "s3"]
    assert attrs["env_var_prefixes"] == ["HTTP", "PIP", "PYTHONPATH"]
    assert runtime_env_attrs({"pip": "reqs.txt", "conda": "env.yml"})["spec_files"] == ["conda", "pip"]
    assert runtime_env_attrs({"conda": "env"})["conda_envs"] == ["env"]
    assert runtime_env_attrs({"image_uri": "img"})["container"] is True
    assert runtime_env_attrs({"x_plugin": {}})["plugins"] == ["x_plugin"]


def test_amounts_round_up_and_clamp() -> None:
    assert milli(0.0001) == 1 and milli(2) == 2000 and milli(None) == 0
    assert milli(float("inf")) == 2**63 - 1 and milli(float("nan")) == 2**63 - 1
    attrs = submission_attrs({"entrypoint": "x", "entrypoint_resources": {"A": 1, "B": 3.5}}, "o")
    assert attrs["entrypoint_resources"] == ["A", "B"] and attrs["entrypoint_resources_max_milli"] == 3500


def test_job_attrs_from_ray_details() -> None:
    attrs = job_attrs(
        "raysubmit_1",
        {
            "submission_id": "raysubmit_1",
            "job_id": "02",
            "status": "RUNNING",
            "type": "SUBMISSION",
            "metadata": {"raywarden.owner": "spiffe://t/user/a"},
        },
    )
    assert attrs["owner"] == "spiffe://t/user/a" and attrs["status"] == "RUNNING"
    assert job_attrs("x", None) == {
        "job_id": "x",
        "submission_id": "",
        "owner": "",
        "status": "UNKNOWN",
        "entrypoint": "",
        "job_type": "",
    }
    # A client cannot claim an owner of another type than a string.
    assert job_attrs("x", {"metadata": {"raywarden.owner": 3}})["owner"] == ""


def test_credentials_in_urls_never_reach_policies_or_audit_records() -> None:
    attrs = runtime_env_attrs(
        {"pip": ["--index-url https://me:s3cret@pypi.internal/simple", "git+https://tok@github.com/org/repo.git"]}
    )
    assert attrs["pip_direct_refs"] == ["git+https://***@github.com/org/repo.git", "https://***@pypi.internal/simple"]


def test_runtime_env_facts_flatten_what_the_pack_judges() -> None:
    from raywarden.policy.jobattrs import runtime_env_facts

    env = runtime_env_attrs(
        {
            "working_dir": "https://x/c.zip",
            "pip": ["git+https://g/r.git", "--pre"],
            "conda": {"channels": ["c"], "dependencies": ["n"], "variables": {}},
            "image_uri": "img",
            "my_plugin": {},
            "uv": "reqs.txt",
            "env_vars": {"PIP_X": "1"},
        }
    )
    assert sorted(runtime_env_facts(env)) == [
        "conda_channel:c",
        "conda_option:variables",
        "container",
        "key:conda",
        "key:env_vars",
        "key:image_uri",
        "key:my_plugin",
        "key:pip",
        "key:uv",
        "key:working_dir",
        "pip_direct_ref:git+https://g/r.git",
        "pip_option:--pre",
        "plugin:my_plugin",
        "spec_file:uv",
        "uri_scheme:https",
    ]
    attrs = submission_attrs({"runtime_env": {"env_vars": {"PIP_X": "1"}}}, "o")
    assert attrs["runtime_env_facts"] == ["key:env_vars"] and attrs["env_var_prefixes"] == ["PIP"]
    assert runtime_env_facts(runtime_env_attrs(None)) == []


def test_request_context_reads_the_clock_and_address_as_before() -> None:
    import datetime as dt

    from raywarden.policy.entities import request_context

    moment = dt.datetime(2026, 3, 1, 23, 59, 59, 900000, tzinfo=dt.timezone.utc)  # a Sunday
    ctx = request_context("token", "10.1.2.3", 12.9, moment)
    assert (ctx["time"], ctx["hour_utc"], ctx["weekday_utc"], ctx["auth_age_s"]) == (int(moment.timestamp()), 23, 6, 12)
    assert ctx["source"] == {"__extn": {"fn": "ip", "arg": "10.1.2.3"}} and ctx["source_ip"] == "10.1.2.3"
    before_epoch = dt.datetime(1969, 12, 31, 22, 30, tzinfo=dt.timezone.utc)
    assert (
        request_context("x", "::1", 0, before_epoch)["hour_utc"],
        request_context("x", "::1", 0, before_epoch)["weekday_utc"],
    ) == (22, before_epoch.weekday())
    nowhere = "0.0.0.0"  # noqa: S104 - a value, not a bind address
    for source, address in [
        ("::ffff:1.2.3.4", "::ffff:102:304"),
        ("01.2.3.4", nowhere),
        ("1.2.3", nowhere),
        ("", nowhere),
        ("1.2.3.4\x00", nowhere),
        ("2001:DB8::1", "2001:db8::1"),
    ]:
        assert request_context("x", source, 0, moment)["source"]["__extn"]["arg"] == address, source


@pytest.mark.parametrize(
    "entry",
    [
        "torch==2.4.0",
        "numpy>=1.26",
        "A.B_c",
        "pkg[extra]>=1",
        "name@https://u",
        "bad===",
        "$X",
        "a:b",
        "./w",
        "#x",
        "-",
        "--pre",
        "",
        "x\u2028--index-url",
        "x\x85-ihttps://e",
        "x\xa0--pre",
        "x\t-f",
        "x\x1c--pre",
    ],
)
def test_plain_entries_read_as_whole_lines_would(entry: str) -> None:
    """Single-word entries skip the line splitting; anything that could hold a second line or word does not."""
    from raywarden.policy.requirements import Packages

    fast, lines = Packages(), Packages()
    fast.add_requirements([entry], "pip")
    for line in entry.splitlines():
        lines._add_line(line)
    assert (fast.names, fast.options, fast.direct) == (lines.names, lines.options, lines.direct)
