"""Two CAs and X.509-SVID leaves: exactly one URI SAN, critical key usage, roots kept apart."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509

from raywarden.errors import PKIError
from raywarden.pki.ca_keys import CertificateAuthority
from raywarden.pki.certs import fingerprint, spiffe_id_of
from raywarden.pki.keys import generate_private_key
from raywarden.pki.spiffe import SpiffeId

pytestmark = pytest.mark.unit
TD = "example.test"


@pytest.fixture(scope="module")
def access() -> CertificateAuthority:
    return CertificateAuthority.create("access", TD, years=1)


@pytest.fixture(scope="module")
def internal() -> CertificateAuthority:
    return CertificateAuthority.create("internal", TD, years=1)


def test_leaf_is_an_x509_svid(access: CertificateAuthority) -> None:
    key = generate_private_key()
    cert = access.issue(key.public_key(), SpiffeId(TD, "user", "alice"), lifetime=dt.timedelta(hours=12))
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{TD}/user/alice"]
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    assert cert.not_valid_after_utc - cert.not_valid_before_utc <= dt.timedelta(hours=12, minutes=5)
    assert spiffe_id_of(cert) == SpiffeId(TD, "user", "alice")
    cert.verify_directly_issued_by(access.certificate)


def test_ca_is_constrained(access: CertificateAuthority) -> None:
    bc = access.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and bc.value.ca and bc.value.path_length == 0
    ku = access.certificate.extensions.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.key_cert_sign


def test_roots_are_kept_apart(access: CertificateAuthority, internal: CertificateAuthority) -> None:
    key = generate_private_key().public_key()
    with pytest.raises(PKIError, match="does not sign node"):
        access.issue(key, SpiffeId(TD, "node", "worker-1"), lifetime=dt.timedelta(days=1))
    with pytest.raises(PKIError, match="does not sign user"):
        internal.issue(key, SpiffeId(TD, "user", "alice"), lifetime=dt.timedelta(days=1))
    with pytest.raises(PKIError, match="outside trust domain"):
        access.issue(key, SpiffeId("other.test", "user", "alice"), lifetime=dt.timedelta(days=1))
    assert fingerprint(access.certificate) != fingerprint(internal.certificate)


def test_keys_are_written_owner_only(tmp_path: Path, access: CertificateAuthority) -> None:
    access.save(tmp_path / "ca.crt", tmp_path / "ca.key")
    assert stat.S_IMODE((tmp_path / "ca.key").stat().st_mode) == 0o600
    loaded = CertificateAuthority.load("access", TD, tmp_path / "ca.crt", tmp_path / "ca.key")
    assert "PRIVATE" not in repr(loaded)


def test_world_readable_key_is_refused(tmp_path: Path, access: CertificateAuthority) -> None:
    access.save(tmp_path / "ca.crt", tmp_path / "ca.key")
    (tmp_path / "ca.key").chmod(0o644)
    with pytest.raises(Exception, match="accessible by other users"):
        CertificateAuthority.load("access", TD, tmp_path / "ca.crt", tmp_path / "ca.key")


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://td/user/Alice",
        "spiffe://td/user/",
        "spiffe://td/admin/x",
        "https://td/user/a",
        "spiffe://td/user/a/b",
        "spiffe://td/gateway/x",
        "spiffe://TD/user/a",
        "spiffe://td/user/a?x=1",
    ],
)
def test_bad_spiffe_ids_are_refused(uri: str) -> None:
    with pytest.raises(PKIError):
        SpiffeId.parse(uri)
