"""A small Ray job: runs tasks across the cluster and prints where they ran."""

import socket

import ray

ray.init()


@ray.remote
def square(x: int) -> tuple[int, str]:
    return x * x, ray.get_runtime_context().get_node_id()[:8]


results = ray.get([square.remote(i) for i in range(8)])
print("squares:", [r[0] for r in results])
print("ran on nodes:", sorted({r[1] for r in results}))
print("cluster CPUs:", ray.cluster_resources().get("CPU"))
print("hello from", socket.gethostname(), "through the raywarden gateway")
