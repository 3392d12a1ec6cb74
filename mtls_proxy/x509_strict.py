"""What OpenSSL's X509_STRICT flag (``tls.x509_strict: true``, the default) refuses, told ahead of time.

With the flag, OpenSSL 3 applies RFC 5280 profile checks to every certificate of a chain longer
than one certificate (a pinned self-signed certificate alone is not checked). Many older CAs and
hand-rolled ``cryptography`` scripts break some of them; nginx does not set the flag. ``check``
uses these functions to name what strict mode will refuse in the configured CAs (a config
problem: every chain through such a CA fails) and in a client certificate given to it; the
handshake log names the setting when the refusal happens anyway (see
:func:`mtls_proxy.tls.classify_handshake_error`). The rules mirror OpenSSL 3.0's
``check_extensions()``; explicit EC parameters and inconsistent signature algorithms, also
refused there, cannot be read through ``cryptography`` and are left to the handshake.
"""

from __future__ import annotations

from cryptography import x509

from mtls_proxy.certs import is_self_signed

#: the OpenSSL verify messages only X509_STRICT produces (lowercase), for classifying handshake failures
STRICT_VERIFY_MESSAGES = (
    "missing authority key identifier",
    "missing subject key identifier",
    "authority key identifier marked critical",
    "subject key identifier marked critical",
    "basic constraints of ca cert not marked critical",
    "ca cert does not include key usage extension",
    "key usage keycertsign invalid for non-ca cert",
    "path length invalid for non-ca cert",
    "path length given without key usage keycertsign",
    "issuer name empty",
    "subject name empty",
    "subject empty and subject alt name extension not critical",
    "subject alt name extension empty",
    "signature algorithms inconsistent",
    "extensions require version 3",
    "certificate public key has explicit ecc parameters",
)


def _ext(cert: x509.Certificate, kind: type[x509.ExtensionType]) -> x509.Extension[x509.ExtensionType] | None:
    try:
        return cert.extensions.get_extension_for_class(kind)
    except x509.ExtensionNotFound:
        return None


def _common(cert: x509.Certificate, issued_by_other: bool) -> list[str]:
    out: list[str] = []
    akid = _ext(cert, x509.AuthorityKeyIdentifier)
    skid = _ext(cert, x509.SubjectKeyIdentifier)
    if issued_by_other and (akid is None or akid.value.key_identifier is None):  # type: ignore[attr-defined]
        out.append("has no Authority Key Identifier (keyid)")
    if akid is not None and akid.critical:
        out.append("marks its Authority Key Identifier critical")
    if skid is not None and skid.critical:
        out.append("marks its Subject Key Identifier critical")
    if len(cert.issuer) == 0:
        out.append("has an empty issuer name")
    san = _ext(cert, x509.SubjectAlternativeName)
    if san is not None and len(san.value) == 0:  # type: ignore[arg-type]
        out.append("has an empty Subject Alternative Name extension")
    if len(cert.subject) == 0:
        if san is None:
            out.append("has an empty subject and no Subject Alternative Name")
        elif not san.critical:
            out.append("has an empty subject and a non-critical Subject Alternative Name")
    return out


def strict_ca_refusals(cert: x509.Certificate) -> list[str]:
    """What strict mode refuses in a CA certificate that client chains run through (empty: nothing)."""
    out = _common(cert, issued_by_other=not is_self_signed(cert))
    bc = _ext(cert, x509.BasicConstraints)
    ku = _ext(cert, x509.KeyUsage)
    if _ext(cert, x509.SubjectKeyIdentifier) is None:
        out.append("has no Subject Key Identifier")
    if bc is not None and not bc.critical:
        out.append("does not mark basicConstraints critical")
    if ku is None:
        out.append("has no keyUsage extension")
    if bc is not None and bc.value.path_length is not None and (ku is None or not ku.value.key_cert_sign):  # type: ignore[attr-defined]
        out.append("sets a path length without keyUsage keyCertSign")
    if len(cert.subject) == 0 and _ext(cert, x509.SubjectAlternativeName) is not None:
        out.append("has an empty subject")
    return out


def strict_leaf_refusals(cert: x509.Certificate) -> list[str]:
    """What strict mode refuses in a client (leaf) certificate issued by a CA (empty: nothing).

    A self-signed leaf is judged alone (a one-certificate chain), so nothing applies to it.
    """
    if is_self_signed(cert):
        return []
    out = _common(cert, issued_by_other=True)
    ku = _ext(cert, x509.KeyUsage)
    bc = _ext(cert, x509.BasicConstraints)
    if ku is not None and ku.value.key_cert_sign:  # type: ignore[attr-defined]
        out.append("has keyUsage keyCertSign but is not a CA")
    if bc is not None and bc.value.path_length is not None and not bc.value.ca:  # type: ignore[attr-defined]
        out.append("sets a path length but is not a CA")
    return out


def strict_ca_problems(cert: x509.Certificate) -> list[str]:
    """:func:`strict_ca_refusals` as operator sentences: ``check``'s problems, ``pki init --import-ca``'s refusals."""
    return [
        f"the CA {cert.subject.rfc4514_string()!r} {why}: with tls.x509_strict: true (the default) OpenSSL refuses"
        " every client chain through it; re-issue the CA, or set tls.x509_strict: false"
        for why in strict_ca_refusals(cert)
    ]
