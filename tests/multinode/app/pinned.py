"""A Ray job with one task pinned to every alive node; prints the node ids it ran on, and as which uid."""

import json
import os
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init()
deadline = time.monotonic() + 60
while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}


@ray.remote(num_cpus=0)
def where() -> tuple[str, int]:
    return ray.get_runtime_context().get_node_id(), os.getuid()


found = ray.get(
    [
        where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False)).remote()
        for node_id in nodes
    ]
)
ran_on = [node for node, _ in found]
print("PINNED " + json.dumps({"nodes": nodes, "ran_on": ran_on, "uids": [uid for _, uid in found]}))
