"""Every runtime_env form Ray accepts is either modelled completely or refused for developers.

The candidates below are run through Ray's own validation, as Ray's job server runs a submission's runtime_env
(``RuntimeEnv(**env)``, ``_validate_no_local_paths``, ``get_runtime_env_info``). For each form Ray accepts, the
default pack either refuses it for a developer (and an admin may still submit it, and a fact the pack does not
allow names why), or allows it, and then everything it installs appears in the attributes: each requirement of
each pip list as pip's own requirements-file parser reads it, each conda package, and no option, channel, path,
URL, log file or installer setting beyond the defaults. The forms Ray's SDK produces from a raw one (what
``JobSubmissionClient`` actually sends) are decided like the raw form.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from pip._internal.req import req_file

from raywarden.policy.entities import DENIED_ENV_VAR_PREFIXES, DEVELOPER_RUNTIME_ENV_FACTS
from raywarden.policy.jobattrs import submission_attrs
from raywarden.policy.requirements import ARCHIVE_SUFFIXES
from raywarden.policy.runtime_env import env_var_prefix
from tests.unit.policy.policy_support import decide, engine, principal, submission

pytestmark = pytest.mark.unit

ENGINE = engine()
SHA = "sha256:" + "ab" * 32
# Files on "the node" (this test's working directory), for the forms Ray reads from disk.
FILES = {
    "ray_current_cluster": "--index-url http://127.0.0.1:9/simple\nrequests\n",
    "requirements.txt": "requests==2.32.3\n",
    "env.yaml": "dependencies:\n  - numpy\n",
    "env.yml": "channels: [evilchan]\ndependencies:\n  - numpy\n",
}
DIRS = ("code", "condaenv")

# Each field, in the forms Ray's validators accept and a few they refuse (Ray's refusal is fine either way).
PIP_LISTS: dict[str, list[Any]] = {
    "plain": ["requests==2.32.3", "numpy>=1.26; python_version >= '3.9'"],
    "extras": ["pkg[extra,other]>=1,<2"],
    "hash": [f"requests==2.32.3 --hash={SHA}"],
    "hash, continued": ["requests==2.32.3 \\", f"    --hash={SHA}", "numpy"],
    "hash, continued lines in one entry": [f"requests==2.32.3 \\\n    --hash={SHA} \\\n    --hash={SHA}"],
    "comment": ["requests  # the HTTP library", "# a comment line", ""],
    "comment hides an option": ["requests #--index-url=https://evil/simple"],
    "joined by a continuation": ["req\\", "uests"],
    "bad hash value": ["requests --hash=md5:abc"],
    "hash then an index": [f"requests --hash {SHA} --index-url=https://evil/simple"],
    "index-url": ["requests", "--index-url https://evil/simple"],
    "index-url=": ["--index-url=https://evil/simple", "requests"],
    "index-url, credentials": ["--index-url https://me:s3cret@pypi.internal/simple", "x"],
    "index-url abbreviated": ["--index=https://evil/simple", "requests"],
    "extra-index-url": ["--extra-index-url https://evil/simple requests"],
    "-i": ["-ihttps://evil/simple", "requests"],
    "-i separate": ["-i https://evil/simple"],
    "find-links": ["-f https://evil/links", "requests"],
    "find-links=": ["--find-links=/tmp/wheels"],
    "trusted-host": ["--trusted-host evil.example"],
    "no-index": ["--no-index"],
    "pre": ["--pre", "requests"],
    "prefer-binary": ["--prefer-binary"],
    "only-binary": ["--only-binary=:all:", "x"],
    "use-feature": ["--use-feature=truststore"],
    "global-option": ["requests --global-option=--x"],
    "config-settings": ["requests --config-settings=a=b"],
    "after a newline": ["requests\n--index-url https://evil/simple"],
    "after a continuation": ["requests \\\n--index-url https://evil/simple"],
    "after a tab": ["requests\t--index-url=https://evil/simple"],
    "after a no-break space": ["requests\xa0--index-url=https://evil/simple"],
    "after a line separator": ["requests\u2028--index-url=https://evil/simple"],
    "-r": ["-r /etc/reqs.txt"],
    "--requirement=": ["--requirement=requirements.txt"],
    "-c": ["-c constraints.txt", "requests"],
    "--constraint=": ["--constraint=/tmp/c.txt"],
    "-e VCS": ["-e git+https://evil/x.git#egg=x"],
    "-e .": ["-e ."],
    "git+": ["git+https://github.com/evil/pkg.git"],
    "PEP 508 URL": ["pkg @ https://evil/pkg-1.0-py3-none-any.whl"],
    "file URL": ["pkg @ file:///tmp/pkg-1.0-py3-none-any.whl"],
    "bare file URL": ["file:///tmp/pkg-1.0-py3-none-any.whl"],
    "file:": ["file:evil.whl"],
    "absolute wheel": ["/tmp/pkg-1.0-py3-none-any.whl"],
    "./evil.whl": ["./evil.whl"],
    "evil.whl": ["evil.whl"],
    "EVIL.WHL": ["EVIL.WHL"],
    "evil.tar.gz": ["evil.tar.gz"],
    "evil.zip with extras": ["evil.zip[x]"],
    "evil.whl with a marker": ["evil.whl; python_version > '3'"],
    "${VAR}": ["${EVIL}"],
    "$VAR": ["$EVIL"],
    "${VAR} in an option": ["requests --hash=${EVIL}"],
    "not strings": ["requests", 3],
}
PIP_FORMS: dict[str, Any] = {
    **{f"list, {name}": entries for name, entries in PIP_LISTS.items()},
    "empty list": [],
    "file on the node": "requirements.txt",
    "review: packages as a file on the node": {"packages": "ray_current_cluster"},
    "packages as an absolute file": {"packages": "ABS/requirements.txt", "pip_check": False},
    "dict": {"packages": ["requests"], "pip_check": False},
    "dict, pip_check": {"packages": ["requests"], "pip_check": True},
    "dict, pip_version": {"packages": ["x"], "pip_version": "==23.0"},
    "dict, pip_version marker": {"packages": ["x"], "pip_version": "==22.0.2;python_version=='3.8.11'"},
    "dict, pip_version URL": {"packages": ["x"], "pip_version": " @ https://evil/pip.whl"},
    "dict, pip_version path": {"packages": ["x"], "pip_version": "/../../tmp/evil"},
    "dict, default options": {
        "packages": ["x"],
        "pip_install_options": ["--disable-pip-version-check", "--no-cache-dir"],
    },
    "dict, no options": {"packages": ["x"], "pip_install_options": []},
    "dict, index-url option": {"packages": ["x"], "pip_install_options": ["--index-url", "https://evil/simple"]},
    "dict, index-url= option": {"packages": ["x"], "pip_install_options": ["--index-url=https://evil/simple"]},
    "dict, -i option": {"packages": ["x"], "pip_install_options": ["-ihttps://evil/simple"]},
    "dict, abbreviated option": {"packages": ["x"], "pip_install_options": ["--extra-ind=https://evil"]},
    "dict, find-links option": {"packages": ["x"], "pip_install_options": ["--find-links", "/tmp"]},
    "dict, option with a value glued": {"packages": ["x"], "pip_install_options": ["--no-cache-dir=1"]},
    "dict, option and a suffix": {"packages": ["x"], "pip_install_options": ["--no-cache-dir$X"]},
    "dict, requirement as an option": {"packages": ["x"], "pip_install_options": ["evilpkg"]},
    "dict, wheel as an option": {"packages": ["x"], "pip_install_options": ["./evil.whl"]},
    "dict, archive name as an option": {"packages": ["x"], "pip_install_options": ["evil.whl"]},
    "dict, URL as an option": {"packages": ["x"], "pip_install_options": ["https://evil/x.whl"]},
    "dict, options not a list": {"packages": ["x"], "pip_install_options": "--pre"},
    "dict, unknown key": {"packages": ["x"], "index_url": "https://evil"},
    "dict, no packages": {"pip_check": False},
}
UV_FORMS: dict[str, Any] = {
    "list": ["requests"],
    "list, index-url": ["--index-url https://evil/simple", "x"],
    "list, git+": ["git+https://github.com/evil/pkg.git"],
    "list, ./evil.whl": ["./evil.whl"],
    "list, $VAR": ["$HOME/evil.whl"],
    "file on the node": "ray_current_cluster",
    "dict from the SDK": {"packages": ["requests"], "uv_check": False, "uv_pip_install_options": ["--no-cache"]},
    "dict, uv_version": {"packages": ["requests"], "uv_version": "==0.4.0"},
    "dict, uv_version URL": {"packages": ["requests"], "uv_version": " @ https://evil/uv.whl"},
    "dict, index-url option": {"packages": ["x"], "uv_pip_install_options": ["--index-url", "https://evil/simple"]},
    "dict, $VAR option": {"packages": ["x"], "uv_pip_install_options": ["--no-cache$EVIL"]},
    "dict, packages as a file": {"packages": "ray_current_cluster"},
}
CONDA_SPECS: dict[str, str] = {
    "plain": "numpy",
    "version": "numpy=1.26",
    "version and build": "numpy=1.26=py311_0",
    "spaced version and build": "numpy 1.26 py311_0",
    "range": "numpy>=1.20,<2",
    "python": "python=3.11",
    "review: bracket channel": "numpy[channel=evilchan]",
    "bracket channel quoted": "numpy[channel='evilchan']",
    "bracket channel with a version": 'numpy[version=">=1", channel=evilchan]',
    "bracket channel after a version": "numpy 1.26 [channel=evilchan]",
    "bracket channel and subdir": "numpy[subdir=linux-64, channel=evilchan]",
    "bracket url": "numpy[url=https://evil/numpy-1.0-0.conda]",
    "bracket md5": "numpy[md5=0123456789abcdef0123456789abcdef]",
    "bracket version only": "numpy[version='>=1.20']",
    "bracket junk": "numpy[channel]",
    "bracket default channel": "numpy[channel=defaults]",
    "channel::": "evilchan::numpy",
    "default channel::": "defaults::numpy",
    "channel/subdir::": "evilchan/linux-64::numpy",
    "URL channel::": "https://conda.anaconda.org/evilchan::numpy",
    "namespace": "ns:numpy",
    "package URL": "https://evil/numpy-1.0-0.tar.bz2",
    "package file": "/tmp/numpy-1.0-0.conda",
    "relative package file": "./numpy-1.0-0.tar.bz2",
    "glob name": "*[md5=0123456789abcdef0123456789abcdef]",
    "parens": "numpy (optional)",
    "track feature": "mkl@",
    "comment": "numpy # [channel=evilchan]",
    "condition": "numpy if __linux",
    "env var": "${EVIL}::numpy",
    "line break": "numpy\n[channel=evilchan]",
}
CONDA_FORMS: dict[str, Any] = {
    **{f"spec, {name}": {"dependencies": [spec]} for name, spec in CONDA_SPECS.items()},
    "named env on the node": "base",
    "env dir on the node": "ABS/condaenv",
    "YAML file on the node": "env.yaml",
    "YAML file on the node, absolute": "ABS/env.yml",
    "default channels": {"channels": ["defaults"], "dependencies": ["python=3.11", "numpy", {"pip": ["requests"]}]},
    "name only": {"name": "myenv"},
    "another channel": {"channels": ["evilchan"], "dependencies": ["numpy"]},
    "nodefaults": {"channels": ["nodefaults"], "dependencies": ["numpy"]},
    "variables": {"dependencies": ["numpy"], "variables": {"PIP_INDEX_URL": "https://evil/simple"}},
    "prefix": {"dependencies": ["numpy"], "prefix": "/tmp/env"},
    "pip list, plain": {"dependencies": ["pip", {"pip": ["requests", "numpy>=1.26"]}]},
    "pip list, index-url": {"dependencies": [{"pip": ["--index-url https://evil/simple", "x"]}]},
    "pip list, ./evil.whl": {"dependencies": [{"pip": ["./evil.whl"]}]},
    "pip list, -e .": {"dependencies": [{"pip": ["-e ."]}]},
    "pip list not a list": {"dependencies": [{"pip": "requests"}]},
    "other installer": {"dependencies": [{"npm": ["x"]}]},
    "dependencies not a list": {"dependencies": "numpy"},
    "channels not a list": {"channels": "evilchan", "dependencies": ["numpy"]},
}
SOURCES: dict[str, dict[str, Any]] = {
    "uploaded working_dir": {"working_dir": "gcs://_ray_pkg_0123456789abcdef.zip"},
    "uploaded working_dir, upper-case scheme": {"working_dir": "GCS://_ray_pkg_0123456789abcdef.zip"},
    "working_dir https": {"working_dir": "https://evil/code.zip"},
    "working_dir s3": {"working_dir": "s3://bucket/code.zip"},
    "working_dir file": {"working_dir": "file:///tmp/code.zip"},
    "working_dir local://": {"working_dir": "local://ABS/code"},
    "working_dir path": {"working_dir": "ABS/code"},
    "uploaded py_modules": {"py_modules": ["gcs://_ray_pkg_a.zip", "gcs://_ray_pkg_b.whl"]},
    "py_modules https": {"py_modules": ["https://evil/mod.whl"]},
    "py_modules path": {"py_modules": ["ABS/code"]},
    "java_jars": {"java_jars": ["https://evil/x.jar"]},
    "excludes": {"excludes": ["*.pt", "data/"]},
    "setup hook": {"worker_process_setup_hook": "mymodule.setup"},
    "_ray_commit": {"_ray_commit": "b7f4259e944bf6959f721b106adc366ddfa0c356"},
    "_ray_release": {"_ray_release": "https://evil/ray.whl"},
    "_inject_current_ray": {"_inject_current_ray": True},
    "py_executable": {"py_executable": "/tmp/evil-python"},
    "_nsight": {"_nsight": "default"},
    "_rocprof_sys": {"_rocprof_sys": {"env": {}, "args": {}}},
    "container": {"container": {"image": "docker.io/evil/img", "run_options": ["--privileged"]}},
    "image_uri": {"image_uri": "docker.io/evil/img"},
    "plugin": {"my_plugin": {"x": 1}},
    "plugin named like a config key": {"eager_install": False},
}
CONFIGS: dict[str, Any] = {
    "from the SDK": {"setup_timeout_seconds": 600, "eager_install": True, "log_files": []},
    "no timeout": {"setup_timeout_seconds": -1},
    "lazy": {"eager_install": False},
    "log_files none": {"log_files": None},
    "log_files absolute": {"log_files": ["/etc/cron.d/evil"]},
    "log_files dot-dot": {"log_files": ["../../../home/ray/.bashrc"]},
    "log_files relative": {"log_files": ["job-driver-raysubmit_other.log"]},
    "timeout beyond int32": {"setup_timeout_seconds": 2**31},
    "timeout as a bool": {"setup_timeout_seconds": True},
    "unknown key": {"setup_timeout_seconds": 600, "surprise": 1},
}
ENV_VARS: dict[str, dict[str, Any]] = {
    "harmless": {"OMP_NUM_THREADS": "4", "WANDB_MODE": "offline"},
    "PIP_INDEX_URL": {"PIP_INDEX_URL": "https://evil/simple"},
    "leading underscore": {"_PIP_STANDALONE_CERT": "/tmp/ca.pem"},
    "keyring backend": {"PYTHON_KEYRING_BACKEND": "evil.Backend"},
    "CONDARC": {"CONDARC": "/tmp/condarc"},
    "UV_INDEX_URL": {"UV_INDEX_URL": "https://evil/simple"},
    "lower-case proxy": {"https_proxy": "http://evil:3128"},
    "not a string": {"A": 1},
}


def candidates() -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    table.update({f"pip {name}": {"pip": value} for name, value in PIP_FORMS.items()})
    table.update({f"uv {name}": {"uv": value} for name, value in UV_FORMS.items()})
    table.update({f"conda {name}": {"conda": value} for name, value in CONDA_FORMS.items()})
    table.update(SOURCES)
    table.update({f"config {name}": {"config": value} for name, value in CONFIGS.items()})
    table.update({f"env_vars {name}": {"env_vars": value} for name, value in ENV_VARS.items()})
    # Fields together, as submissions send them.
    table["SDK job"] = {
        "working_dir": "gcs://_ray_pkg_0123456789abcdef.zip",
        "pip": {"packages": ["requests"], "pip_check": False},
        "env_vars": {"OMP_NUM_THREADS": "4"},
        "config": {"setup_timeout_seconds": 600, "eager_install": True, "log_files": []},
        "_ray_commit": "b7f4259e",
    }
    table["conda and env_vars"] = {"conda": {"dependencies": ["numpy"]}, "env_vars": {"A": "1"}}
    table["uploaded code and a bad log file"] = {
        "working_dir": "gcs://_ray_pkg_a.zip",
        "config": CONFIGS["log_files absolute"],
    }
    table["pip and uv together"] = {"pip": ["x"], "uv": ["y"]}
    return table


CANDIDATES = candidates()
# What the default pack does with some of them, and the fact that names a refusal.
EXPECTED = {
    "pip review: packages as a file on the node": "spec_file:pip",
    "conda spec, review: bracket channel": "conda_channel:evilchan",
    "conda spec, bracket channel quoted": "conda_channel:evilchan",
    "conda spec, bracket channel with a version": "conda_channel:evilchan",
    "conda spec, bracket channel after a version": "conda_channel:evilchan",
    "conda spec, bracket channel and subdir": "conda_channel:evilchan",
    "conda spec, bracket url": "conda_channel:https://evil/numpy-1.0-0.conda",
    "conda spec, channel::": "conda_channel:evilchan",
    "conda spec, URL channel::": "conda_channel:https://conda.anaconda.org/evilchan",
    "conda spec, comment": "conda_option:match_spec.comment",
    "conda spec, condition": "conda_option:match_spec.condition",
    "conda spec, default channel::": "allow",
    "conda spec, bracket default channel": "allow",
    "conda default channels": "allow",
    "conda pip list, plain": "allow",
    "conda named env on the node": "conda_env:base",
    "conda YAML file on the node": "spec_file:conda",
    "pip list, ./evil.whl": "pip_direct_ref:./evil.whl",
    "pip list, evil.whl": "pip_direct_ref:evil.whl",
    "pip list, evil.tar.gz": "pip_direct_ref:evil.tar.gz",
    "pip list, file:": "pip_direct_ref:file:evil.whl",
    "pip dict, wheel as an option": "pip_direct_ref:./evil.whl",
    "pip dict, archive name as an option": "pip_direct_ref:evil.whl",
    "pip list, plain": "allow",
    "pip list, hash": "allow",
    "pip list, hash, continued": "allow",
    "pip list, comment": "allow",
    "pip list, comment hides an option": "allow",
    "pip dict, pip_version": "allow",
    "pip dict, default options": "allow",
    "uv dict from the SDK": "allow",
    "uv dict, uv_version": "allow",
    "config log_files absolute": "log_file:/etc/cron.d/evil",
    "config log_files dot-dot": "log_file:../../../home/ray/.bashrc",
    "config log_files relative": "log_file:job-driver-raysubmit_other.log",
    "config from the SDK": "allow",
    "config log_files none": "allow",
    "uploaded working_dir": "allow",
    "uploaded py_modules": "allow",
    "SDK job": "allow",
    "env_vars harmless": "allow",
}


@pytest.fixture
def node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This test's working directory stands for the node's: the files and directories Ray may read."""
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    for name in DIRS:
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


def placed(value: Any, root: Path) -> Any:
    """A candidate with ABS replaced by the node directory."""
    if isinstance(value, str):
        return value.replace("ABS", str(root))
    if isinstance(value, list):
        return [placed(v, root) for v in value]
    if isinstance(value, dict):
        return {k: placed(v, root) for k, v in value.items()}
    return value


def ray_reads(env: dict[str, Any]) -> dict[str, Any] | None:
    """The runtime_env as Ray's job server validates it (None if Ray refuses it), in the form Ray's SDK sends."""
    from ray._private.utils import get_runtime_env_info
    from ray.dashboard.modules.job.common import JobSubmitRequest
    from ray.runtime_env import RuntimeEnv
    from ray.runtime_env.runtime_env import _validate_no_local_paths

    try:
        JobSubmitRequest(entrypoint="python main.py", runtime_env=env)
        parsed = RuntimeEnv(**env)
        _validate_no_local_paths(parsed)
        get_runtime_env_info(parsed, is_job_runtime_env=True)
        normalized: dict[str, Any] = parsed.to_dict()
        return normalized
    except (TypeError, ValueError):
        return None


def pip_reads(packages: list[str]) -> list[tuple[str, dict[str, Any]]] | None:
    """pip's own reading of the requirements file Ray writes: (requirement, non-default options) per line."""
    parser = req_file.build_parser()
    defaults = parser.get_default_values()
    lines = []
    for _, line in req_file.preprocess("".join(p + "\n" for p in packages)):
        args, options = req_file.break_args_options(line)
        try:
            parsed, _ = parser.parse_args(shlex.split(options), parser.get_default_values())
        except (req_file.OptionParsingError, ValueError):  # pip refuses the line: nothing of it is installed
            return None
        changed = {k: v for k, v in vars(parsed).items() if v != getattr(defaults, k)}
        lines.append((args, changed))
    return lines


def index_name(requirement: str) -> str | None:
    """The project a requirement installs from the index, or None for a URL, a path or an archive."""
    if not requirement or "/" in requirement or ":" in requirement.split(";")[0]:
        return None
    try:
        req = Requirement(requirement)
    except ValueError:
        return None
    if req.url or req.name.lower().endswith(ARCHIVE_SUFFIXES):
        return None
    return re.sub(r"[-_.]+", "-", req.name).lower()


def assert_modelled_completely(normalized: dict[str, Any], attrs: dict[str, Any]) -> None:
    """An allowed runtime_env: everything Ray would install appears in the attributes, and nothing else is used."""
    env = attrs["runtime_env"]
    assert set(normalized) <= {"working_dir", "py_modules", "pip", "uv", "conda", "env_vars", "excludes", "config"} | {
        "worker_process_setup_hook",
        "_ray_commit",
    }
    for installer in ("pip", "uv"):
        spec = normalized.get(installer)
        if spec is None:
            continue
        lines = pip_reads(spec["packages"])
        assert lines is not None, "pip refuses this list, so nothing may have been read as plain"
        for requirement, options in lines:
            assert set(options) <= {"hashes"}, options
            if requirement:
                assert index_name(requirement) in env["pip_packages"], (requirement, env["pip_packages"])
        options = spec.get(f"{installer}_install_options" if installer == "pip" else "uv_pip_install_options", [])
        for option in options:
            if option.startswith("-"):
                assert option in {"--no-cache", "--no-cache-dir", "--disable-pip-version-check"}, option
            else:  # a positional argument of `pip install`: one more requirement
                assert index_name(option) in env["pip_packages"], option
        version = spec.get(f"{installer}_version")
        if version is not None:
            assert index_name(installer + version) in env["pip_packages"]
    conda = normalized.get("conda")
    if conda is not None:
        assert isinstance(conda, dict) and set(conda) <= {"name", "channels", "dependencies"}, conda
        assert set(conda.get("channels", [])) <= {"defaults"}
        for dep in conda.get("dependencies", []):
            if isinstance(dep, dict):
                assert set(dep) == {"pip"}
                for requirement, options in pip_reads(dep["pip"]) or []:
                    assert not options and index_name(requirement) in env["pip_packages"]
            else:
                name = re.match(r"(?:defaults::)?([A-Za-z0-9_][A-Za-z0-9_.+-]*)", dep)
                assert name and name.group(1).lower() in env["conda_packages"], dep
    for uri in [normalized.get("working_dir") or "gcs://", *normalized.get("py_modules", [])]:
        assert uri.lower().startswith("gcs://"), uri
    for name in normalized.get("env_vars") or {}:
        assert env_var_prefix(name) not in DENIED_ENV_VAR_PREFIXES, name
    assert not (normalized.get("config") or {}).get("log_files"), normalized["config"]


def test_the_table_holds_forms_ray_accepts_and_refuses(node: Path) -> None:
    verdicts = [ray_reads(placed(env, node)) is not None for env in CANDIDATES.values()]
    assert sum(verdicts) > 150 and not all(verdicts), sum(verdicts)


@pytest.mark.parametrize("name", sorted(CANDIDATES))
def test_every_form_ray_accepts_is_modelled_or_refused(name: str, node: Path) -> None:
    env = placed(CANDIDATES[name], node)
    normalized = ray_reads(env)
    expected = EXPECTED.get(name)
    if normalized is None:
        assert expected is None, f"Ray refuses {name}: the table's expectation is wrong"
        return
    body = {"entrypoint": "python main.py", "runtime_env": env}
    built = submission("alice", **body)
    attrs = submission_attrs(body, built.attrs["owner"])
    allowed = decide(ENGINE, principal("alice", "developers"), "jobs.submit", built).allowed
    if allowed:
        assert_modelled_completely(normalized, attrs)
    else:
        # Refused for a reason the attributes name, and only for developers.
        beyond = set(attrs["runtime_env_facts"]) - set(DEVELOPER_RUNTIME_ENV_FACTS)
        denied_vars = set(attrs["env_var_prefixes"]) & set(DENIED_ENV_VAR_PREFIXES)
        assert beyond or denied_vars, attrs
        assert decide(ENGINE, principal("root", "admins"), "jobs.submit", built).allowed
    if expected == "allow":
        assert allowed, attrs["runtime_env_facts"]
    elif expected is not None:
        assert not allowed and expected in attrs["runtime_env_facts"], attrs["runtime_env_facts"]
    # What Ray's SDK would send for this runtime_env is decided alike, unless the SDK read a file of the
    # client's own (a requirements file, a conda YAML file) into the list it sends, or dropped something Ray
    # ignores (which the raw form is refused for).
    pip, conda = env.get("pip"), env.get("conda")
    read_from_disk = isinstance(pip, str) or isinstance(env.get("uv"), str) or isinstance(conda, str)
    read_from_disk |= isinstance(pip, dict) and isinstance(pip.get("packages"), str)
    if not read_from_disk:
        sent = submission("alice", entrypoint="python main.py", runtime_env=normalized)
        sent_allowed = decide(ENGINE, principal("alice", "developers"), "jobs.submit", sent).allowed
        dropped = any(fact.startswith("unsupported:") for fact in attrs["runtime_env_facts"])
        assert sent_allowed is allowed or (sent_allowed and dropped), (normalized, attrs["runtime_env_facts"])
