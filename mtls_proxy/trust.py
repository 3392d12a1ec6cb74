"""Which client certificates are trusted: leaves under a client CA, and pinned certificates.

``tls.client_ca`` trusts every certificate a configured CA issued. ``tls.client_certs`` trusts
exact certificates, by SHA-256 of their DER: the classic "self-signed certificate in the app,
only that certificate accepted" recipe (keytool, nginx's ``ssl_client_certificate``). A pinned
certificate is a trust anchor for itself only: the config refuses one that could issue others
(CA:TRUE, keyUsage keyCertSign, X.509 v1), OpenSSL refuses a self-signed look-alike with the same
subject ("self-signed certificate"), and :func:`certificate_refusal` refuses any chain that runs
*through* a pinned certificate. Everything else (expiry, deny-list, policy, identity headers,
reload) applies to pinned certificates exactly as to CA-issued ones.

No I/O here: the config calls :func:`pin_refusal` at load, the request path calls
:func:`certificate_refusal` once per connection and state.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID

from mtls_proxy.certs import PeerIdentity, is_ca


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """Lowercase hex SHA-256 of the DER: what ``PeerIdentity.fingerprint_sha256`` holds."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def pin_refusal(cert: x509.Certificate) -> str | None:
    """Why ``cert`` cannot be pinned in ``tls.client_certs`` (a config problem), or None.

    A pinned certificate sits in OpenSSL's trust store; one that OpenSSL would also accept as an
    issuer would let its key mint other client certificates, so it must go in ``tls.client_ca``.
    """
    if cert.version != x509.Version.v3:
        return "is an X.509 v1 certificate, which OpenSSL treats as a CA when self-signed; pin a v3 certificate"
    if is_ca(cert):
        return "is a CA certificate (basicConstraints CA:TRUE): put CAs in tls.client_ca, pin only leaves"
    try:
        if cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign:
            return "has keyUsage keyCertSign (it could sign other certificates): pin only leaves"
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return None
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        return "its extended key usage does not include clientAuth: every handshake with it would be refused"
    return None


def certificate_refusal(peer: PeerIdentity, trusted_anchors: Collection[str], pinned: Collection[str]) -> str | None:
    """The trust checks on a verified client certificate: a denial reason code, or None.

    ``trusted_anchors``: SHA-256 of every configured client CA certificate; ``pinned``: SHA-256
    of every ``tls.client_certs`` certificate. Both empty: the anchor is not checked (a policy
    judged without TLS material, in unit tests). In this order:

    - ``client_auth_eku_missing``: the EKU lacks clientAuth; or there is no EKU at all and the
      certificate is not pinned (a pinned certificate without EKU is accepted: it is pinned);
    - ``leaf_is_ca``: the leaf is a CA certificate;
    - ``ca_not_trusted``: the chain's anchor is no configured CA, and the leaf is not a pinned
      certificate standing alone (a pinned certificate is an anchor for itself only, never for a
      chain through it).
    """
    is_pinned = peer.fingerprint_sha256 in pinned
    if not peer.has_client_auth_eku and (peer.has_eku or not is_pinned):
        return "client_auth_eku_missing"
    if peer.is_ca:
        return "leaf_is_ca"
    if (trusted_anchors or pinned) and peer.anchor_sha256 not in trusted_anchors and not (
        is_pinned and not peer.chain_der
    ):
        return "ca_not_trusted"
    return None
