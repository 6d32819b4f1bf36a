import os
import sys

# Whatever the gateway and its workers create (metrics files, locks, run files) is the control plane's alone.
os.umask(0o077)

# The gateway's metrics are kept per process in files (prometheus_client's multiprocess mode), which must be
# chosen before prometheus_client is first imported: the supervisor starts each run with an empty folder and
# its workers inherit the variable.
if "--worker-fds" not in sys.argv and "--state-dir" in sys.argv[:-1]:
    import shutil
    from pathlib import Path

    _folder = Path(sys.argv[sys.argv.index("--state-dir") + 1]) / "run" / "gateway-metrics"
    shutil.rmtree(_folder, ignore_errors=True)
    _folder.mkdir(parents=True, mode=0o700, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(_folder)

from raywarden.gateway.server import main  # noqa: E402 - after the umask and the metrics folder

main()
