"""What a client trusts after a gateway's CA answer (client/enroll.py): forward along signed rollovers only, the
previous CA while the gateway lists it, never back to an older CA; and when a profile's certificate is due."""

from __future__ import annotations

import datetime as dt
import fcntl
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from raywarden.client.enroll import _find_pinned, verified_trust
from raywarden.client.profile import Profile
from raywarden.client.renew import needs_renewal
from raywarden.errors import PKIError
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import cert_pem, fingerprint
from raywarden.pki.keys import generate_private_key, private_key_pem
from raywarden.pki.rollover import Rollover, make_rollover
from raywarden.pki.spiffe import SpiffeId

pytestmark = pytest.mark.unit

TD = "client.test"
LATER = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=7)


def pem(authority: CertificateAuthority) -> str:
    return cert_pem(authority.certificate).decode()


def answer(
    current: CertificateAuthority, listed: list[CertificateAuthority], statements: list[Rollover]
) -> dict[str, Any]:
    """What GET /raywarden/v1/ca says (pki/trust.py trust_answer)."""
    return {
        "access_ca_pem": pem(current),
        "sha256": current.fingerprint,
        "trust_domain": TD,
        "trusted_pem": [pem(c) for c in listed],
        "rollovers": [s.to_json() for s in statements],
    }


def fps(certs: list[x509.Certificate]) -> list[str]:
    return [fingerprint(c) for c in certs]


@pytest.fixture(scope="module")
def cas() -> list[CertificateAuthority]:
    return [CertificateAuthority.create("access", TD, years=1) for _ in range(3)]


def test_during_the_overlap_a_client_of_the_old_ca_trusts_both(cas: list[CertificateAuthority]) -> None:
    one, two = cas[0], cas[1]
    statements = [make_rollover(one, two, LATER)]
    got = verified_trust(answer(two, [two, one], statements), [one.certificate], TD)
    assert fps(got) == [two.fingerprint, one.fingerprint]
    # After the overlap the gateway lists the new CA only: the old one is dropped.
    assert fps(verified_trust(answer(two, [two], statements), got, TD)) == [two.fingerprint]


def test_a_client_pinning_the_new_ca_during_the_overlap_trusts_its_predecessor(
    cas: list[CertificateAuthority],
) -> None:
    """`login --ca-fingerprint NEW` while the gateway still presents a certificate from the old CA."""
    one, two = cas[0], cas[1]
    statements = [make_rollover(one, two, LATER)]
    listed = answer(two, [two, one], statements)
    pinned = _find_pinned(listed, two.fingerprint)
    assert pinned is not None
    assert fps(verified_trust(listed, [pinned], TD)) == [two.fingerprint, one.fingerprint]
    # A CA the gateway lists but the new one never signed for stays out.
    stranger = CertificateAuthority.create("access", TD, years=1)
    assert fps(verified_trust(answer(two, [two, stranger], statements), [pinned], TD)) == [two.fingerprint]


def test_a_pin_on_the_first_ca_reaches_the_third(cas: list[CertificateAuthority]) -> None:
    statements = [make_rollover(cas[0], cas[1], LATER), make_rollover(cas[1], cas[2], LATER)]
    reply = answer(cas[2], [cas[2], cas[1]], statements)
    pinned = _find_pinned(reply, cas[0].fingerprint)
    assert pinned is not None and fingerprint(pinned) == cas[0].fingerprint
    assert fps(verified_trust(reply, [pinned], TD)) == [cas[2].fingerprint, cas[1].fingerprint]


def test_an_answer_never_moves_a_client_back(cas: list[CertificateAuthority]) -> None:
    """A replayed answer from before the rotation, served by whoever sits on the unverified connection."""
    one, two = cas[0], cas[1]
    statements = [make_rollover(one, two, LATER)]
    with pytest.raises(PKIError, match="no CA rollover statement leads"):
        verified_trust(answer(one, [one], statements), [two.certificate, one.certificate], TD)


def test_an_answer_for_a_ca_nobody_handed_over_to_is_refused(cas: list[CertificateAuthority]) -> None:
    mallory = CertificateAuthority.create("access", TD, years=1)
    with pytest.raises(PKIError, match="no CA rollover statement leads"):
        verified_trust(answer(mallory, [mallory], []), [cas[0].certificate], TD)
    assert _find_pinned(answer(mallory, [mallory], []), cas[0].fingerprint) is None


@pytest.mark.parametrize(
    "broken",
    [
        {"access_ca_pem": "x"},
        {"rollovers": "x"},
        {"trusted_pem": ["x"]},
        {"trusted_pem": ["a"] * 9},
        {"rollovers": [{}]},
    ],
)
def test_malformed_answers_are_refused(cas: list[CertificateAuthority], broken: dict[str, Any]) -> None:
    with pytest.raises(PKIError):
        verified_trust({**answer(cas[0], [cas[0]], []), **broken}, [cas[0].certificate], TD)


# -- when a certificate is due ------------------------------------------------------------------------------


def _profile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lifetime: dt.timedelta) -> Profile:
    monkeypatch.setenv("RAYWARDEN_HOME", str(tmp_path))
    authority = CertificateAuthority.create("access", TD, years=1)
    key = generate_private_key()
    cert = authority.issue(key.public_key(), SpiffeId(TD, "user", "alice"), lifetime=lifetime)
    profile = Profile("p", "https://127.0.0.1:1", f"spiffe://{TD}/user/alice")
    profile.save(key_pem=private_key_pem(key), cert_pem=cert_pem(cert), ca_pem=cert_pem(authority.certificate))
    return profile


def test_a_certificate_is_due_once_half_its_life_has_passed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = _profile(tmp_path, monkeypatch, dt.timedelta(hours=12))
    cert = profile.certificate()
    start = cert.not_valid_before_utc
    life = cert.not_valid_after_utc - start
    assert not needs_renewal(profile, start + life * 0.49)
    assert needs_renewal(profile, start + life * 0.51)


def _hold(folder: str, held: Any, release: Any) -> None:
    import os

    os.environ["RAYWARDEN_HOME"] = folder
    with Profile("p", "https://127.0.0.1:1", "spiffe://x/user/a").lock():
        held.set()
        release.wait(60)


def test_the_profile_lock_is_exclusive_across_processes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    profile = _profile(tmp_path, monkeypatch, dt.timedelta(hours=12))
    ctx = multiprocessing.get_context("spawn")
    held, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold, args=(str(tmp_path), held, release))
    child.start()
    try:
        assert held.wait(60)
        fd = os.open(profile.folder / ".lock", os.O_RDWR)
        try:
            with pytest.raises(BlockingIOError):
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        finally:
            os.close(fd)
    finally:
        release.set()
        child.join(60)
    with profile.lock():  # free again once the other process let go
        pass
