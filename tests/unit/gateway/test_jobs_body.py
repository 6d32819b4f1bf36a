"""Job submission bodies: strict parsing and owner stamping."""

from __future__ import annotations

import json

import pytest

from raywarden.gateway.jobs import OWNER_KEY, BadJobBody, parse_submission, stamp_owner
from raywarden.gateway.owner_seal import OwnerSeal

pytestmark = pytest.mark.unit


def test_owner_is_overwritten() -> None:
    body = json.dumps({"entrypoint": "python x.py", "metadata": {OWNER_KEY: "spiffe://td/user/mallory", "a": "b"}})
    seal = OwnerSeal(b"k" * 32)
    stamped = json.loads(stamp_owner(parse_submission(body.encode()), "spiffe://td/user/alice", seal))
    # A submission without an id gets one, like Ray's, so that the seal names it.
    assert stamped["submission_id"].startswith("raysubmit_")
    assert seal.owner_of(stamped) == "spiffe://td/user/alice"
    assert stamped["metadata"].pop("raywarden.owner_seal")
    assert stamped["metadata"] == {OWNER_KEY: "spiffe://td/user/alice", "a": "b"}
    assert stamped["entrypoint"] == "python x.py"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b"[]", "JSON object"),
        (b"{}", "entrypoint"),
        (b'{"entrypoint": ""}', "entrypoint"),
        (b'{"entrypoint": "x", "surprise": 1}', "surprise"),
        (b'{"entrypoint": "x", "submission_id": "../etc"}', "submission_id"),
        (b'{"entrypoint": "x", "entrypoint_num_cpus": -1}', "entrypoint_num_cpus"),
        (b'{"entrypoint": "x", "metadata": {"a": 1}}', "metadata"),
    ],
)
def test_bad_bodies_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(BadJobBody, match=message):
        parse_submission(body)
