"""The runtime_env analysis in detail: requirement files as pip reads them, conda match specs as conda reads them,
the record's shape, and the bounds that keep it cheap."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest
from pip._internal.req import req_file

from raywarden.policy.conda_specs import MAX_SPEC, CondaEnv, _section
from raywarden.policy.requirements import (
    MAX_SHOWN,
    REQUIREMENT_COST,
    TOO_LARGE,
    WORK_BUDGET,
    Packages,
    _pip_joined,
    plain_requirement,
    shown,
    strip_comment,
)
from raywarden.policy.runtime_env import env_var_prefix, runtime_env_attrs, runtime_env_facts

pytestmark = pytest.mark.unit


def facts(env: object) -> list[str]:
    return sorted(runtime_env_facts(runtime_env_attrs(env)))  # type: ignore[arg-type]


def test_the_reviews_requests_are_refused_facts() -> None:
    # Ray reads a string in pip.packages as the path of a requirements file on the head node.
    assert facts({"pip": {"packages": "ray_current_cluster"}}) == ["key:pip", "spec_file:pip"]
    # conda's match spec takes the channel from a bracketed channel= as well as from "::".
    assert facts({"conda": {"dependencies": ["numpy[channel=evilchan]"]}}) == ["conda_channel:evilchan", "key:conda"]


@pytest.mark.parametrize(
    ("entry", "fact"),
    [
        ("./evil.whl", "pip_direct_ref:./evil.whl"),
        ("evil.whl", "pip_direct_ref:evil.whl"),
        ("Evil-1.0-py3-none-any.WHL", "pip_direct_ref:Evil-1.0-py3-none-any.WHL"),
        ("evil.tar.gz", "pip_direct_ref:evil.tar.gz"),
        ("evil.tgz[x]", "pip_direct_ref:evil.tgz[x]"),
        ("file:evil.whl", "pip_direct_ref:file:evil.whl"),
        ("file:///tmp/evil.whl", "pip_direct_ref:file:///tmp/evil.whl"),
        ("evil @ file:///tmp/evil.whl", "pip_direct_ref:evil @ file:///tmp/evil.whl"),
        ("~/evil.whl", "pip_direct_ref:~/evil.whl"),
    ],
)
def test_archive_names_and_paths_are_direct_references(entry: str, fact: str) -> None:
    """pip installs a requirement named like an archive ("evil.whl") from that file in its working directory."""
    for env in ({"pip": [entry]}, {"uv": [entry]}, {"conda": {"dependencies": [{"pip": [entry]}]}}):
        assert fact in facts(env), env
    assert fact in facts({"pip": {"packages": ["x"], "pip_install_options": [entry]}})


@pytest.mark.parametrize("name", ["evil-1.0-py3-none-any.whl", "evil.tar.gz", "evil.zip", "EVIL-1.0.TGZ"])
def test_pip_itself_installs_an_archive_name_from_a_file(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Section 6 of the review, confirmed with pip's own reading of a requirement line: an archive name is a
    file in pip's working directory (which an earlier job can write), not a project on the index."""
    import warnings

    from pip._internal.req.constructors import install_req_from_line

    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        link = install_req_from_line(name).link
    assert link is not None and link.url.startswith("file://"), link
    assert f"pip_direct_ref:{name}" in facts({"pip": [name]})


def test_a_plain_name_that_only_contains_an_archive_suffix_is_still_a_name() -> None:
    assert runtime_env_attrs({"pip": ["whl-tools", "zipp", "tarfile-utils>=1"]})["pip_packages"] == [
        "tarfile-utils",
        "whl-tools",
        "zipp",
    ]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (
            ["--no-cache-dir", "--disable-pip-version-check"],
            ["pip_option:--disable-pip-version-check", "pip_option:--no-cache-dir"],
        ),
        (["--index-url", "https://e/simple"], ["pip_direct_ref:https://e/simple", "pip_option:--index-url"]),
        (["--index-url=https://e/simple"], ["pip_direct_ref:https://e/simple", "pip_option:--index-url"]),
        (["-ihttps://e/simple"], ["pip_direct_ref:https://e/simple", "pip_option:-i"]),
        (["--ind=https://e"], ["pip_direct_ref:https://e", "pip_option:--ind"]),
        (["-qi", "https://e"], ["pip_direct_ref:https://e", "pip_direct_ref:i", "pip_option:-q"]),
        (
            ["--no-cache-dir --index-url=https://e"],
            ["pip_direct_ref:https://e", "pip_option:--no-cache-dir --index-url"],
        ),
        (["--no-cache$X"], ["pip_option:--no-cache$X"]),
        (["extra-package"], []),
    ],
)
def test_install_options_are_argv_items_spelled_exactly(options: list[str], expected: list[str]) -> None:
    """Each item is one argv item: optparse takes unique prefixes (--ind is --index-url), so only the exact
    spellings the pack allows pass."""
    found = facts({"pip": {"packages": ["x"], "pip_install_options": options}})
    assert [f for f in found if f != "key:pip"] == expected


def test_version_pins_are_the_requirement_ray_spells() -> None:
    attrs = runtime_env_attrs({"pip": {"packages": ["x"], "pip_version": "==23.0;python_version>'3'"}})
    assert attrs["pip_packages"] == ["pip", "x"] and runtime_env_facts(attrs) == ["key:pip"]
    assert "pip_direct_ref:pip @ https://e/pip.whl" in facts(
        {"pip": {"packages": ["x"], "pip_version": " @ https://e/pip.whl"}}
    )
    assert "pip_direct_ref:uv/../x" in facts({"uv": {"packages": ["x"], "uv_version": "/../x"}})
    assert "unsupported:uv.uv_version" in facts({"uv": {"packages": ["x"], "uv_version": 1}})


@pytest.mark.parametrize(
    "entries",
    [
        ["requests==2.31.0 \\", "    --hash=sha256:" + "a" * 64, "numpy  # arrays"],
        ["req\\", "uests", "x"],
        ["x \\", "--index-url https://e", "y"],
        ["# note \\", "--pre"],
        ["a \\\\", "b"],
        ["a\\"],
        ["\\", "--pre"],
        ["a #c \\", "--pre"],
    ],
)
def test_continuations_are_joined_as_pip_joins_them(entries: list[str]) -> None:
    """pip's own join_lines and comment rule give the same logical lines as ours."""
    text = "".join(e + "\n" for e in entries)
    theirs = [line for _, line in req_file.ignore_comments(req_file.join_lines(enumerate(text.splitlines())))]
    ours = [strip_comment(line).strip() for line in _pip_joined(text.splitlines())]
    assert [line for line in ours if line] == theirs


def test_comment_stripping_matches_pips_pattern() -> None:
    rng = random.Random(7)
    for _ in range(20000):
        line = "".join(rng.choice("a #\t\xa0\u2003-=") for _ in range(rng.randint(0, 12)))
        assert strip_comment(line).strip() == req_file.COMMENT_RE.sub("", line).strip(), repr(line)


def test_bracket_sections_are_found_as_condas_pattern_finds_them() -> None:
    pattern = re.compile(r".*(?:(\[.*\]))")
    rng = random.Random(8)
    for _ in range(20000):
        text = "".join(rng.choice("ab[]()=, :") for _ in range(rng.randint(0, 14)))
        found = pattern.match(text)
        assert _section(text, "[", "]") == (found.group(1) if found else ""), text


@pytest.mark.parametrize(
    ("spec", "name", "extra"),
    [
        ("numpy", "numpy", []),
        ("NumPy=1.26=py311_0", "numpy", []),
        ("numpy >=1.20,<2", "numpy", []),
        ("numpy[version='>=1.20', build=py*]", "numpy", []),
        ("defaults::numpy", "numpy", ["channel:defaults"]),
        ("numpy[channel=defaults]", "numpy", ["channel:defaults"]),
        ("numpy[channel=evil]", "numpy", ["channel:evil"]),
        ('numpy[channel="evil", version=1]', "numpy", ["channel:evil"]),
        ("defaults::numpy[channel=evil]", "numpy", ["channel:defaults", "channel:evil"]),
        ("evil/linux-64::numpy", "numpy", ["channel:evil/linux-64"]),
        ("https://x/evil::numpy", "numpy", ["channel:https://x/evil"]),
        ("numpy[url=https://e/numpy-1-0.conda]", "numpy", ["channel:https://e/numpy-1-0.conda"]),
        ("numpy[subdir=osx-64]", "numpy", ["option:match_spec.subdir"]),
        ("numpy[sha256=abc]", "numpy", ["option:match_spec.sha256"]),
        ("numpy[junk]", "numpy", ["option:match_spec.brackets"]),
        ("numpy (optional)", "numpy", ["option:match_spec.parens"]),
        ("ns:numpy", "numpy", ["option:match_spec.namespace"]),
        ("num*", None, ["option:match_spec.name"]),
        ("./numpy", None, ["option:match_spec.name"]),
        ("numpy-1.0-0.tar.bz2", None, ["channel:numpy-1.0-0.tar.bz2"]),
        ("mkl@", None, ["option:match_spec.track_features"]),
        ("numpy #x", None, ["option:match_spec.comment"]),
        ("numpy if __unix", None, ["option:match_spec.condition"]),
        ("numpy$X", None, ["option:match_spec.env_var"]),
        ("numpy\n", None, ["option:match_spec.invalid"]),
        ("n" * (MAX_SPEC + 1), None, ["option:match_spec.invalid"]),
    ],
)
def test_conda_match_specs(spec: str, name: str | None, extra: list[str]) -> None:
    env = CondaEnv(Packages())
    env.add_spec(spec)
    assert sorted(env.names) == ([name] if name else [])
    assert sorted([f"channel:{c}" for c in env.channels] + [f"option:{o}" for o in env.options]) == sorted(extra)


def test_conda_env_files() -> None:
    attrs = runtime_env_attrs(
        {
            "conda": {
                "name": "ignored",
                "channels": ["defaults", "evil"],
                "dependencies": ["numpy", {"pip": ["requests"]}, {"npm": []}, 3],
                "variables": {"X": "1"},
            }
        }
    )
    assert attrs["conda_packages"] == ["numpy"] and attrs["pip_packages"] == ["requests"]
    assert attrs["conda_channels"] == ["defaults", "evil"]
    assert attrs["conda_options"] == ["dependencies.npm", "variables"]
    assert attrs["unsupported"] == ["conda.dependencies"]
    assert facts({"conda": "env.yml"}) == ["key:conda", "spec_file:conda"]
    assert facts({"conda": "/opt/conda/envs/x"}) == ["conda_env:/opt/conda/envs/x", "key:conda"]


def test_config_and_log_files() -> None:
    assert facts({"config": {"setup_timeout_seconds": 600, "eager_install": True, "log_files": []}}) == ["key:config"]
    assert facts({"config": {"setup_timeout_seconds": -1, "log_files": None}}) == ["key:config"]
    assert facts({"config": {"log_files": ["/etc/cron.d/x", "../x", "mine.log"]}}) == [
        "key:config",
        "log_file:../x",
        "log_file:/etc/cron.d/x",
        "log_file:mine.log",
    ]
    for bad in ({"setup_timeout_seconds": 0}, {"setup_timeout_seconds": 2**31}, {"setup_timeout_seconds": True}):
        assert "unsupported:config.setup_timeout_seconds" in facts({"config": bad})
    assert "unsupported:config.eager_install" in facts({"config": {"eager_install": "yes"}})
    assert "unsupported:config.log_files" in facts({"config": {"log_files": "/etc/x"}})
    assert "unsupported:config.surprise" in facts({"config": {"surprise": 1}})
    assert "unsupported:config" in facts({"config": []})


def test_every_field_ray_defines_is_read_or_refused_by_key() -> None:
    from raywarden.policy.entities import DEVELOPER_RUNTIME_ENV_FACTS
    from raywarden.policy.runtime_env import _FIELD_READERS, RAY_RUNTIME_ENV_FIELDS

    allowed_keys = {f.removeprefix("key:") for f in DEVELOPER_RUNTIME_ENV_FACTS if f.startswith("key:")}
    # A field without a reader is refused by its key; one with a reader may be allowed.
    assert allowed_keys <= set(_FIELD_READERS) <= RAY_RUNTIME_ENV_FIELDS


def test_the_record_carries_its_optional_sets_only_when_they_hold_something() -> None:
    plain = runtime_env_attrs({"pip": ["x"]})
    assert not {"conda_envs", "log_files", "unsupported"} & set(plain)
    odd = runtime_env_attrs({"conda": "base", "config": {"log_files": ["a"]}, "working_dir": 1})
    assert (odd["conda_envs"], odd["log_files"], odd["unsupported"]) == (["base"], ["a"], ["working_dir"])
    assert runtime_env_attrs("not a mapping")["unsupported"] == ["runtime_env"]  # type: ignore[arg-type]


def test_env_var_prefixes() -> None:
    assert env_var_prefix("_PIP_STANDALONE_CERT") == "PIP"
    assert env_var_prefix("pip_index_url") == "PIP"
    assert env_var_prefix("PYTHON_KEYRING_BACKEND") == "PYTHON"
    assert env_var_prefix("PYTHONUNBUFFERED") == "PYTHONUNBUFFERED"
    assert env_var_prefix("__") == ""
    attrs = runtime_env_attrs({"env_vars": {"a_b": "1", "OMP_NUM_THREADS": "2", "X": 3}})
    assert attrs["env_var_prefixes"] == ["A", "OMP", "X"] and attrs["unsupported"] == ["env_vars"]


def test_values_are_shown_without_credentials_and_cut_recognisably() -> None:
    assert shown("https://me:s3cr%40t@pypi.internal/simple") == "https://***@pypi.internal/simple"
    # A backslash is not userinfo: parsers disagree on where that host starts, so the value stays as it is.
    assert shown("https://evil.example\\@pypi.internal/simple") == "https://evil.example\\@pypi.internal/simple"
    assert shown("pkg @ https://tok@github.com/o/r.git") == "pkg @ https://***@github.com/o/r.git"
    long = "x" * (MAX_SHOWN + 1)
    assert shown(long) == "x" * MAX_SHOWN + "\u2026" and shown("x" * MAX_SHOWN) == "x" * MAX_SHOWN


def test_parsing_is_bounded() -> None:
    """Long or deeply nested requirements are not handed to the PEP 508 parser, and one runtime_env costs a
    bounded amount of work whatever its size; what is not read is refused, never let through."""
    assert plain_requirement("a" * 300) is None
    assert plain_requirement("a ; " + "(" * 5 + "python_version>'3'" + ")" * 5) is None
    assert plain_requirement("a[" + ",".join("b" * 18) + "]") is None
    most = WORK_BUDGET // REQUIREMENT_COST
    many = Packages()
    many.add_requirements([f"p{i}" for i in range(most + 5)], "pip")
    assert len(many.names) == most and many.unsupported == {TOO_LARGE}
    assert "unsupported:runtime_env.size" in facts({"pip": ["--pre"] * WORK_BUDGET})
    assert "unsupported:runtime_env.size" in facts({"conda": {"dependencies": ["numpy"] * (WORK_BUDGET + 1)}})
    assert "unsupported:env_vars" in facts({"env_vars": {f"V{i}": "1" for i in range(1001)}})
    huge = Packages()
    huge.add_requirements(["a" + " " * 10000 + "b", "--pre " * 2000], "pip")
    assert not huge.names and huge.direct
