"""Replay: bob's job plants pip, uv and conda config in HOME, so that later runtime_env installs (alice's too)
would use bob's index. HOME is now root's and read-only, pip reads no per-user config while PIP_CONFIG_FILE
exists, uv reads no config; alice's pip runtime_env still installs from the index the operator configured."""

from __future__ import annotations

import os

import pytest

from tests import attack_jobs
from tests.support import Cluster

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="Ray runs as a user of its own only when started as root"),
]

PLANT = """import json, os
home = os.environ["HOME"]
spots = {
    os.path.join(home, ".config/pip/pip.conf"): "[global]\\nindex-url = http://127.0.0.1:9/bob-simple\\n",
    os.path.join(home, ".pip/pip.conf"): "[global]\\nindex-url = http://127.0.0.1:9/bob-simple\\n",
    os.path.join(os.environ.get("XDG_CONFIG_HOME", home), "pip/pip.conf"): "[global]\\nindex-url = http://127.0.0.1:9/x\\n",
    os.path.join(home, ".config/uv/uv.toml"): '[[index]]\\nurl = "http://127.0.0.1:9/bob-uv"\\ndefault = true\\n',
    os.path.join(home, ".condarc"): "channels:\\n  - http://127.0.0.1:9/bob-conda\\n",
    os.path.join(home, ".netrc"): "machine pypi.org login bob password x\\n",
}
result = {}
for path, text in spots.items():
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        result[path] = "planted"
    except OSError as exc:
        result[path] = exc.strerror
print("RESULT " + json.dumps(result))
"""

CHECK = """import json, os, subprocess, sys, six
debug = subprocess.run([sys.executable, "-m", "pip", "config", "debug"], capture_output=True, text=True).stdout
print("RESULT " + json.dumps({"six": six.__version__, "debug": debug, "home": os.environ["HOME"],
      "pip_config_file": os.environ.get("PIP_CONFIG_FILE"), "uv_no_config": os.environ.get("UV_NO_CONFIG")}))
"""


def test_config_planted_in_home_reaches_no_later_install(cluster: Cluster) -> None:
    bob = attack_jobs.developer(cluster)
    planted = attack_jobs.run(cluster, bob, PLANT)
    assert planted and set(planted.values()) <= {"Permission denied"}, planted
    alice = attack_jobs.developer(cluster, "alice")
    found = attack_jobs.run(cluster, alice, CHECK, runtime_env={"pip": ["six"]})
    assert found["six"]  # installed, from the configured index, in a fresh virtualenv
    runtime = cluster.state.ray_dir.parent
    assert found["home"] == str(runtime / "home") and found["uv_no_config"] == "1"
    assert found["pip_config_file"] == str(runtime / "pip.conf")
    # pip inside the runtime_env's virtualenv: the empty control-plane file, and no per-user config at all.
    debug = found["debug"]
    assert f"{runtime / 'pip.conf'}, exists: True" in debug
    assert "\nuser:" not in debug and "bob" not in debug
    home = (runtime / "home").stat()
    assert (home.st_uid, home.st_mode & 0o777) == (0, 0o755)
    assert not any((runtime / "home").iterdir())
