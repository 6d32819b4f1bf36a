"""node.json is written by three processes (`join`, the node agent, Ray's start within the agent): each change
keeps what the others wrote, however their reads and writes interleave."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from raywarden.cluster.nodestate import NodeState
from tests.unit.cluster.conftest import joined_worker

pytestmark = pytest.mark.unit


@pytest.fixture
def node(tmp_path: Path) -> NodeState:
    node = NodeState(tmp_path / "worker")
    node.root.mkdir()
    node.save(joined_worker("w1", "nodes.test"))
    return node


def test_an_update_from_a_copy_read_earlier_keeps_what_was_written_since(node: NodeState) -> None:
    earlier = node.load()  # the agent's copy, read before `join` recorded the agent's pid
    node.update(agent_pid=4242)
    node.update(earlier, ray_pid=77)
    assert earlier.ray_pid == 77  # the caller's copy follows
    saved = node.load()
    assert (saved.agent_pid, saved.ray_pid) == (4242, 77)


def test_concurrent_updates_of_different_fields_all_land(node: NodeState) -> None:
    def bump(field: str) -> None:
        for n in range(1, 101):
            node.update(**{field: n})

    writers = [threading.Thread(target=bump, args=(f,)) for f in ("agent_pid", "ray_pid", "num_cpus")]
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    saved = node.load()
    assert (saved.agent_pid, saved.ray_pid, saved.num_cpus) == (100, 100, 100)


def test_an_update_with_a_wrong_field_or_type_is_refused_and_changes_nothing(node: NodeState) -> None:
    before = node.config_path.read_bytes()
    with pytest.raises(ValueError):
        node.update(agent_pid="not a pid")
    with pytest.raises(ValueError):
        node.update(no_such_field=1)
    assert node.config_path.read_bytes() == before
