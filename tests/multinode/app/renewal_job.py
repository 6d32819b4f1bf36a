"""A Ray job that keeps starting short tasks, spread over every node, until it has run tasks on the worker
under WANT different Ray node ids (Ray gives a node a new id at every restart: the original one, then one
per certificate renewal), or LIMIT seconds have passed (then it fails). Prints a summary line."""

import collections
import json
import sys
import time

import ray

WORKER_IP, WANT, LIMIT = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
ray.init()


@ray.remote(num_cpus=1, max_retries=10)
def work() -> tuple[str, str, float]:
    time.sleep(0.3)
    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address(), time.time()


started = time.monotonic()
per_ip: collections.Counter[str] = collections.Counter()
worker_ids: dict[str, dict[str, float]] = {}
tasks = 0
last_print = 0.0
done = False
while time.monotonic() - started < LIMIT:
    for node_id, ip, at in ray.get([work.options(scheduling_strategy="SPREAD").remote() for _ in range(4)]):
        tasks += 1
        per_ip[ip] += 1
        if ip == WORKER_IP:
            seen = worker_ids.setdefault(node_id, {"first": at, "last": at, "tasks": 0})
            seen["last"], seen["tasks"] = at, seen["tasks"] + 1
    newest = max(worker_ids.values(), key=lambda s: s["first"], default=None)
    # Done once the worker under its WANT-th id has run a few tasks (it rejoined and takes work again).
    done = len(worker_ids) >= WANT and newest is not None and newest["tasks"] >= 4 and len(per_ip) >= 2
    if done or time.monotonic() - last_print > 15:
        last_print = time.monotonic()
        seconds = round(time.monotonic() - started, 1)
        summary = {"tasks": tasks, "per_ip": per_ip, "worker_node_ids": worker_ids, "seconds": seconds}
        print(("RESULT " if done else "PROGRESS ") + json.dumps(summary), flush=True)
    if done:
        break
sys.exit(0 if done else 1)
