"""What a submission's runtime_env looks like to policies."""

from __future__ import annotations

import pytest

from raywarden.policy.jobattrs import job_attrs, milli, runtime_env_attrs, submission_attrs

pytestmark = pytest.mark.unit


def test_plain_requirements_are_normalised_names() -> None:
    attrs = runtime_env_attrs({"pip": ["Requests_OAuthlib==1.0", "numpy; python_version>'3'", "# comment", ""]})
    assert attrs["pip_packages"] == ["numpy", "requests-oauthlib"]
    assert attrs["pip_options"] == [] and attrs["pip_direct_refs"] == []


@pytest.mark.parametrize(("entry", "option", "ref"), [
    ("--index-url https://e/simple", "--index-url", "https://e/simple"),
    ("--index-url=https://e/simple", "--index-url", None),
    ("-ihttps://e/simple", "-i", None),
    ("requests\n--extra-index-url https://e", "--extra-index-url", "https://e"),
    ("-f ./wheels", "-f", "./wheels"),
    ("--trusted-host e.example", "--trusted-host", "e.example"),
])
def test_options_inside_the_package_list_are_found(entry: str, option: str, ref: str | None) -> None:
    attrs = runtime_env_attrs({"pip": [entry]})
    assert option in attrs["pip_options"]
    if ref:
        assert ref in attrs["pip_direct_refs"]


def test_sources_and_files() -> None:
    attrs = runtime_env_attrs({"working_dir": "gcs://_ray_pkg_a.zip", "py_modules": ["s3://b/m.zip", "/opt/x"],
                               "env_vars": {"PIP_INDEX_URL": "v", "http_proxy": "v", "PYTHONPATH": "v"}})
    assert attrs["uri_schemes"] == ["gcs", "local", "s3"]
    assert attrs["env_var_prefixes"] == ["HTTP", "PIP", "PYTHONPATH"]
    assert runtime_env_attrs({"pip": "reqs.txt", "conda": "env"})["spec_files"] == ["conda", "pip"]
    assert runtime_env_attrs({"image_uri": "img"})["container"] is True
    assert runtime_env_attrs({"x_plugin": {}})["plugins"] == ["x_plugin"]


def test_amounts_round_up_and_clamp() -> None:
    assert milli(0.0001) == 1 and milli(2) == 2000 and milli(None) == 0
    assert milli(float("inf")) == 2**63 - 1 and milli(float("nan")) == 2**63 - 1
    attrs = submission_attrs({"entrypoint": "x", "entrypoint_resources": {"A": 1, "B": 3.5}}, "o")
    assert attrs["entrypoint_resources"] == ["A", "B"] and attrs["entrypoint_resources_max_milli"] == 3500


def test_job_attrs_from_ray_details() -> None:
    attrs = job_attrs("raysubmit_1", {"submission_id": "raysubmit_1", "job_id": "02", "status": "RUNNING",
                                      "type": "SUBMISSION", "metadata": {"raywarden.owner": "spiffe://t/user/a"}})
    assert attrs["owner"] == "spiffe://t/user/a" and attrs["status"] == "RUNNING"
    assert job_attrs("x", None) == {"job_id": "x", "submission_id": "", "owner": "", "status": "UNKNOWN",
                                    "entrypoint": "", "job_type": ""}
    # A client cannot claim an owner of another type than a string.
    assert job_attrs("x", {"metadata": {"raywarden.owner": 3}})["owner"] == ""


def test_credentials_in_urls_never_reach_policies_or_audit_records() -> None:
    attrs = runtime_env_attrs({"pip": ["--index-url https://me:s3cret@pypi.internal/simple",
                                       "git+https://tok@github.com/org/repo.git"]})
    assert attrs["pip_direct_refs"] == ["git+https://***@github.com/org/repo.git", "https://***@pypi.internal/simple"]
