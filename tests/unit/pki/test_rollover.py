"""Rollover statements: a client pinning a CA follows the old CA's signed word to its successor, and nothing else."""

from __future__ import annotations

import copy
import datetime as dt
import itertools
from typing import Any

import pytest
from cryptography import x509

from raywarden.errors import PKIError
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import fingerprint
from raywarden.pki.rollover import MAX_CHAIN, Rollover, follow_chain, make_rollover, parse_rollover, predecessors

pytestmark = pytest.mark.unit

TD = "rollover.test"
LATER = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=7)


def ca(trust_domain: str = TD) -> CertificateAuthority:
    return CertificateAuthority.create("access", trust_domain, years=1)


def chain(n: int) -> tuple[list[CertificateAuthority], list[Rollover]]:
    """n CAs, each rotated into the next."""
    cas = [ca() for _ in range(n)]
    return cas, [make_rollover(old, new, LATER) for old, new in itertools.pairwise(cas)]


def follow(trusted: list[x509.Certificate], statements: list[Rollover], target: x509.Certificate) -> list[str]:
    path = follow_chain(trusted, statements, fingerprint(target), role="access", trust_domain=TD)
    return [fingerprint(c) for c in path]


def test_a_client_pinning_the_first_ca_reaches_the_third() -> None:
    cas, statements = chain(3)
    assert follow([cas[0].certificate], statements, cas[2].certificate) == [c.fingerprint for c in cas]
    # Already trusting the target: nothing to follow. From the middle: one step.
    assert follow([cas[2].certificate], statements, cas[2].certificate) == [cas[2].fingerprint]
    assert follow([cas[1].certificate], statements[::-1], cas[2].certificate) == [
        cas[1].fingerprint,
        cas[2].fingerprint,
    ]


def test_a_statement_survives_its_json_form() -> None:
    cas, [statement] = chain(2)
    again = parse_rollover(statement.to_json())
    assert follow([cas[0].certificate], [again], cas[1].certificate)[-1] == cas[1].fingerprint


def _edited(statement: Rollover, edit: Any) -> Rollover:
    value = copy.deepcopy(statement.to_json())
    edit(value)
    return parse_rollover(value)


def test_a_statement_signed_by_another_key_is_refused() -> None:
    cas, _ = chain(2)
    mallory = ca()
    # Mallory signs "the pinned CA hands over to mine" with her own key, claiming the pinned CA's name.
    forged = make_rollover(mallory, mallory, LATER)
    forged_json = forged.to_json()
    forged_json["rollover"]["old_ca_pem"] = statement_pem(cas[0])
    with pytest.raises(PKIError, match="not signed by the CAs it names"):
        follow([cas[0].certificate], [parse_rollover(forged_json)], mallory.certificate)


def statement_pem(authority: CertificateAuthority) -> str:
    from raywarden.pki.certs import cert_pem

    return cert_pem(authority.certificate).decode()


@pytest.mark.parametrize("field", ["overlap_until", "issued_at", "new_ca_pem"])
def test_an_edited_statement_is_refused(field: str) -> None:
    cas, [statement] = chain(2)
    other = ca()

    def edit(value: dict[str, Any]) -> None:
        value["rollover"][field] = statement_pem(other) if field == "new_ca_pem" else "2099-01-01T00:00:00Z"

    with pytest.raises(PKIError, match="not signed"):
        follow(
            [cas[0].certificate],
            [_edited(statement, edit)],
            other.certificate if field == "new_ca_pem" else cas[1].certificate,
        )


def test_a_fork_is_believed_nowhere() -> None:
    """Whoever stole the old key signs a second successor: a client that sees both believes neither."""
    cas, [statement] = chain(2)
    mallory = ca()
    second = make_rollover(cas[0], mallory, LATER)
    for target in (cas[1], mallory):
        with pytest.raises(PKIError, match="no CA rollover statement leads"):
            follow([cas[0].certificate], [statement, second], target.certificate)


def test_no_path_and_foreign_targets_are_refused() -> None:
    cas, statements = chain(3)
    with pytest.raises(PKIError, match="no CA rollover statement leads"):
        follow([cas[0].certificate], statements[1:], cas[2].certificate)
    with pytest.raises(PKIError, match="no CA rollover statement leads"):
        follow([cas[0].certificate], statements, ca().certificate)


def test_the_successor_must_be_a_ca_of_the_same_trust_domain_and_role() -> None:
    old, other_domain = ca(), ca("elsewhere.test")
    with pytest.raises(PKIError, match="another trust domain"):
        follow([old.certificate], [make_rollover(old, other_domain, LATER)], other_domain.certificate)
    internal = CertificateAuthority.create("internal", TD, years=1)
    statement = make_rollover(internal, ca(), LATER)
    # An internal CA's statement never moves an access trust anchor.
    with pytest.raises(PKIError, match="no CA rollover statement leads"):
        follow([internal.certificate], [statement], statement.new)


def test_a_leaf_certificate_is_no_successor() -> None:
    from raywarden.pki.keys import generate_private_key
    from raywarden.pki.spiffe import SpiffeId

    old = ca()
    key = generate_private_key()
    leaf = old.issue(key.public_key(), SpiffeId(TD, "user", "mallory"), lifetime=dt.timedelta(hours=1))
    as_signer = CertificateAuthority("access", TD, leaf, key)
    with pytest.raises(PKIError, match="signs leaf certificates only"):
        follow([old.certificate], [make_rollover(old, as_signer, LATER)], leaf)


def test_the_new_ca_names_its_predecessor_and_nothing_else() -> None:
    cas, [statement] = chain(2)
    assert [fingerprint(c) for c in predecessors(cas[1].certificate, [statement], role="access", trust_domain=TD)] == [
        cas[0].fingerprint
    ]
    # Mallory's CA "hands over" to the new CA with her key alone: the new CA never signed it.
    mallory = ca()
    forged = make_rollover(mallory, mallory, LATER).to_json()
    forged["rollover"]["new_ca_pem"] = statement_pem(cas[1])
    assert predecessors(cas[1].certificate, [parse_rollover(forged)], role="access", trust_domain=TD) == []


def test_a_statement_the_new_ca_did_not_sign_is_refused() -> None:
    cas, [statement] = chain(2)
    value = statement.to_json()
    value["signature_new"] = value["signature"]
    with pytest.raises(PKIError, match="not signed by the CAs it names"):
        follow([cas[0].certificate], [parse_rollover(value)], cas[1].certificate)
    del value["signature_new"]
    with pytest.raises(PKIError, match="lacks a signature"):
        parse_rollover(value)


@pytest.mark.parametrize(
    "value",
    [None, [], {"rollover": "x"}, {"rollover": {"version": 2}}, {"rollover": {"version": 1, "role": "access"}}],
)
def test_malformed_statements_are_refused(value: object) -> None:
    with pytest.raises(PKIError):
        parse_rollover(value)


def test_oversized_chains_are_refused() -> None:
    cas, statements = chain(2)
    with pytest.raises(PKIError, match="too many"):
        follow_chain(
            [cas[0].certificate], statements * (MAX_CHAIN + 1), cas[1].fingerprint, role="access", trust_domain=TD
        )


def test_a_loop_ends() -> None:
    a, b = ca(), ca()
    loop = [make_rollover(a, b, LATER), make_rollover(b, a, LATER)]
    with pytest.raises(PKIError, match="no CA rollover statement leads"):
        follow([a.certificate], loop, ca().certificate)
