"""Job submission bodies with giant numbers and oversized maps: a clear refusal naming the field and its bound,
never an overflow; bodies within the bounds are forwarded as they were checked."""

from __future__ import annotations

import json

import pytest

from raywarden.gateway.jobs import MAX_AMOUNT, MAX_ENTRIES, MAX_MEMORY_BYTES, BadJobBody, parse_submission, stamp_owner
from raywarden.gateway.owner_seal import OwnerSeal

pytestmark = pytest.mark.unit


def body(**fields: object) -> bytes:
    return json.dumps({"entrypoint": "python x.py", **fields}).encode()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        # The review's request: 10^400 CPUs, as an integer literal and as a float literal (which Python reads as
        # inf). The body's own bounds refuse these before any field is read (gateway/bodies.py).
        (b'{"entrypoint": "x", "entrypoint_num_cpus": 1' + b"0" * 400 + b"}", "more than 32 characters"),
        (b'{"entrypoint": "x", "entrypoint_num_cpus": 1e400}', "out of range"),
        (b'{"entrypoint": "x", "entrypoint_num_cpus": -1e400}', "out of range"),
        (b'{"entrypoint": "x", "entrypoint_num_cpus": NaN}', "NaN is not JSON"),
        (b'{"entrypoint": "x", "entrypoint_num_gpus": Infinity}', "Infinity is not JSON"),
        # Short literals beyond the model's bounds name the field and the bound.
        (
            b'{"entrypoint": "x", "entrypoint_num_cpus": 100000000000000000000}',
            "entrypoint_num_cpus: Input should be less",
        ),
        (b'{"entrypoint": "x", "entrypoint_num_cpus": -1e30}', "entrypoint_num_cpus: Input should be greater"),
        (body(entrypoint_num_gpus=MAX_AMOUNT + 0.5), f"less than or equal to {MAX_AMOUNT}"),
        (
            body(entrypoint_memory=MAX_MEMORY_BYTES + 1),
            f"entrypoint_memory: Input should be less than or equal to {MAX_MEMORY_BYTES}",
        ),
        (b'{"entrypoint": "x", "entrypoint_memory": 1' + b"0" * 400 + b"}", "more than 32 characters"),
        (b'{"entrypoint": "x", "entrypoint_resources": {"TPU": 1e30}}', "entrypoint_resources.TPU"),
        (body(entrypoint_resources={f"R{i}": 1 for i in range(MAX_ENTRIES + 1)}), "entrypoint_resources: Dictionary"),
        (body(metadata={f"k{i}": "v" for i in range(MAX_ENTRIES + 1)}), "metadata: Dictionary should have at most"),
        (body(metadata={"k" * 257: "v"}), "metadata"),
        (body(entrypoint_label_selector={"": "v"}), "entrypoint_label_selector"),
    ],
)
def test_numbers_and_maps_beyond_the_bounds_are_a_clear_refusal(raw: bytes, message: str) -> None:
    with pytest.raises(BadJobBody) as refused:
        parse_submission(raw)
    assert message in str(refused.value)


def test_bodies_at_the_bounds_are_forwarded_as_checked() -> None:
    job = parse_submission(
        body(
            entrypoint_num_cpus=MAX_AMOUNT,
            entrypoint_num_gpus=0.5,
            entrypoint_memory=MAX_MEMORY_BYTES,
            entrypoint_resources={f"R{i}": MAX_AMOUNT for i in range(MAX_ENTRIES)},
            metadata={f"k{i}": "v" for i in range(MAX_ENTRIES)},
        )
    )
    sent = json.loads(stamp_owner(job, "spiffe://td/user/alice", OwnerSeal(b"k" * 32)))
    assert sent["entrypoint_num_cpus"] == MAX_AMOUNT and sent["entrypoint_memory"] == MAX_MEMORY_BYTES
    assert (
        len(sent["entrypoint_resources"]) == MAX_ENTRIES and len(sent["metadata"]) == MAX_ENTRIES + 2
    )  # owner and seal
