"""Peer parsing and chain rebuilding (used for resumed sessions, which carry no verified chain)."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.serialization import Encoding

from mtls_proxy.certs import parse_peer, rebuild_chain
from mtls_proxy.pki import x509 as X

DER = Encoding.DER
ROOT = X.issue_ca({"CN": "Root"})
INTER = X.issue_ca({"CN": "Intermediate"}, issuer=ROOT)
OTHER = X.issue_ca({"CN": "Other"})
FORGED_ROOT = X.issue_ca({"CN": "Root"})  # same name, other key


def der(issued: X.Issued) -> bytes:
    return issued.cert.public_bytes(DER)


def test_direct_leaf_chains_to_its_root():
    leaf = X.issue_client("d", ROOT)
    assert rebuild_chain(der(leaf), [OTHER.cert, ROOT.cert]) == (der(ROOT),)


def test_leaf_under_an_intermediate_chains_through_it():
    leaf = X.issue_client("d", INTER)
    assert rebuild_chain(der(leaf), [ROOT.cert, INTER.cert]) == (der(INTER), der(ROOT))
    assert rebuild_chain(der(leaf), [INTER.cert]) == ()  # no self-signed anchor: not trusted


def test_same_issuer_name_but_other_key_does_not_chain():
    leaf = X.issue_client("d", FORGED_ROOT)
    assert rebuild_chain(der(leaf), [ROOT.cert]) == ()


def test_anchor_is_the_last_chain_element_or_the_leaf():
    leaf = X.issue_client("d", ROOT)
    p = parse_peer(der(leaf), rebuild_chain(der(leaf), [ROOT.cert]))
    assert p.anchor_sha256 == hashlib.sha256(der(ROOT)).hexdigest()
    alone = parse_peer(der(leaf))
    assert alone.anchor_sha256 == hashlib.sha256(der(leaf)).hexdigest()
