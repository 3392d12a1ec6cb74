"""SSLContext construction and TLS failure classification.

A context is built once per (re)load, never per connection, and never loads the
system trust store: the configured client CAs and pinned client certificates are the only anchors. A reload
builds a new context, so tickets issued under the old one (its own random ticket
keys) cannot resume under the new trust settings.
"""

from __future__ import annotations

import ssl
import tempfile
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mtls_proxy.certs import is_self_signed, load_certificates
from mtls_proxy.config import TlsSettings
from mtls_proxy.tlsconn import FirstByteTimeout
from mtls_proxy.x509_strict import STRICT_VERIFY_MESSAGES

_MIN_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _remember_sni(ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
    """Keep the SNI name on the SSL object so requests can be checked against Host (421)."""
    ssl_object.mtls_sni = server_name.lower() if server_name else None  # type: ignore[attr-defined]


def build_server_context(tls: TlsSettings, fetched_crls: Sequence[bytes] = (), *,
                         client_cert_optional: bool = False) -> ssl.SSLContext:
    """The listener's context: TLS >= 1.2, CERT_REQUIRED against the pinned CAs only, CRLs, no renegotiation."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _MIN_VERSIONS[tls.min_version]
    ctx.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # TLS 1.2: forward-secret AEAD suites only (Python's default also offers CBC-SHA256/384 suites).
    # @SECLEVEL=2 keeps refusing client keys under 112 bits (RSA-1024). TLS 1.3 suites are all AEAD.
    ctx.set_ciphers("@SECLEVEL=2:ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL")
    if not tls.session_tickets:
        ctx.options |= ssl.OP_NO_TICKET
        ctx.num_tickets = 0
    else:
        # One TLS 1.3 ticket per handshake, not OpenSSL's two: a phone resumes with one ticket and gets
        # a fresh one each time, and every ticket costs an encryption of the session with the client
        # certificate in it (~125 us here, a sixth of a full mTLS handshake).
        ctx.num_tickets = 1
    ctx.load_cert_chain(str(tls.cert), str(tls.key))
    # CERT_OPTIONAL (a client_auth: optional listener) still verifies a certificate that is presented,
    # exactly as CERT_REQUIRED does; it only lets a client present none.
    ctx.verify_mode = ssl.CERT_OPTIONAL if client_cert_optional else ssl.CERT_REQUIRED
    for ca in tls.client_ca:
        ctx.load_verify_locations(cafile=str(ca))
    pinned = [c for p in tls.client_certs for c in load_certificates(p.read_bytes())]
    for cert in pinned:  # trusted exactly: OpenSSL accepts a leaf that *is* a trust-store certificate
        ctx.load_verify_locations(cadata=cert.public_bytes(Encoding.DER))
    if any(not is_self_signed(c) for c in pinned):
        # A pinned certificate issued by a CA is no self-signed root: OpenSSL then needs to be told
        # that any trust-store certificate may end a chain. This also lets an intermediate CA in
        # tls.client_ca anchor chains on its own (without its root). Pinned certificates cannot
        # issue (the config refuses CA:TRUE, keyCertSign and v1) and a chain through one is refused
        # per request (trust.certificate_refusal).
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    if tls.crl or fetched_crls:
        for crl in tls.crl:
            ctx.load_verify_locations(cafile=str(crl))
        for pem in fetched_crls:
            _load_crl_bytes(ctx, pem)
        # Leaf check against the issuing CA's CRL; a missing or expired CRL fails the handshake (closed).
        # When every configured CA has its CRL, the whole chain is checked (an intermediate revoked by the
        # root's CRL fails the handshake); otherwise judge() still refuses it per request (ca_revoked).
        every = _every_ca_has_a_crl(tls, fetched_crls)
        ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_CHAIN if every else ssl.VERIFY_CRL_CHECK_LEAF
    if tls.x509_strict:  # RFC 5280 profile checks (AKID on issued certificates, SKI on CAs...): x509_strict.py
        ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    # RFC 8740 (HTTP/2 over TLS 1.3 forbids post-handshake authentication): the certificate is asked
    # for in the handshake, never later, whichever protocol ALPN picks.
    ctx.set_alpn_protocols(list(tls.alpn))
    ctx.sni_callback = _remember_sni
    return ctx


def _load_crl_bytes(ctx: ssl.SSLContext, pem: bytes) -> None:
    """Python's ``cadata`` takes certificates only: a CRL held in memory goes through a private temp file."""
    with tempfile.NamedTemporaryFile(prefix="mtls-crl-", suffix=".pem") as f:
        f.write(pem)
        f.flush()
        ctx.load_verify_locations(cafile=f.name)


def _every_ca_has_a_crl(tls: TlsSettings, fetched_crls: Sequence[bytes]) -> bool:
    cas = [c for p in tls.client_ca for c in x509.load_pem_x509_certificates(p.read_bytes())]
    pems = [p.read_bytes() for p in tls.crl] + list(fetched_crls)
    issuers = {x509.load_pem_x509_crl(pem).issuer for pem in pems}
    return len(cas) > 1 and all(c.subject in issuers for c in cas)


def classify_handshake_error(exc: BaseException) -> str:
    """A short, stable reason code for a failed handshake (logs and metrics)."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        msg = (exc.verify_message or "").lower()
        if any(m in msg for m in STRICT_VERIFY_MESSAGES):  # before "signature": "signature algorithms inconsistent"
            return "x509_strict"
        for needle, code in (
            # CRL needles first: "CRL has expired" must not read as an expired certificate
            ("unable to get certificate crl", "crl_missing"),
            ("crl has expired", "crl_expired"),
            ("crl is not yet valid", "crl_not_yet_valid"),
            ("expired", "cert_expired"),
            ("not yet valid", "cert_not_yet_valid"),
            ("revoked", "cert_revoked"),
            ("unsupported certificate purpose", "bad_eku"),
            ("unsuitable certificate purpose", "bad_eku"),
            ("self-signed", "unknown_ca"),
            ("self signed", "unknown_ca"),
            ("unable to get local issuer", "unknown_ca"),
            ("key too small", "weak_key"),
            ("key too weak", "weak_key"),  # OpenSSL 3: "EE certificate key too weak"
            ("ca md too weak", "weak_signature"),
            ("digest algorithm too weak", "weak_signature"),  # before "signature"
            ("signature", "bad_signature"),
            ("path length", "chain_too_long"),
            ("name constraint", "name_constraints"),
            ("subtree violation", "name_constraints"),  # OpenSSL: "permitted/excluded subtree violation"
        ):
            if needle in msg:
                return code
        return "verify_failed"
    if isinstance(exc, ssl.SSLError):
        reason = (exc.reason or "").upper()
        if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in reason or "CERTIFICATE_REQUIRED" in reason:
            return "no_client_cert"
        if "UNSUPPORTED_PROTOCOL" in reason or "VERSION" in reason:
            return "protocol_version"
        if "NO_SHARED_CIPHER" in reason:
            return "no_shared_cipher"
        if "HTTP_REQUEST" in reason or "WRONG_VERSION_NUMBER" in reason:
            return "not_tls"
        return "tls_error"
    if isinstance(exc, FirstByteTimeout):
        return "first_byte_timeout"
    if isinstance(exc, TimeoutError):
        return "handshake_timeout"
    if isinstance(exc, (ConnectionError, EOFError)):
        return "connection_closed"
    return "tls_error"


def handshake_failure_hint(reason: str) -> str:
    """What to add to a handshake-failure log line so the operator finds the setting behind it."""
    if reason == "x509_strict":
        return (" (refused by tls.x509_strict: true, RFC 5280 profile checks; set tls.x509_strict: false to"
                " accept such certificates, see docs/security.md)")
    return ""
