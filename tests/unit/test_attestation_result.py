"""The Verdict: ok only without reasons, and a JSON form for the CLI and logs."""

from __future__ import annotations

import json
from dataclasses import dataclass

from mtls_proxy.attestation import result as R
from mtls_proxy.attestation.result import Refusal, Verdict


@dataclass(frozen=True)
class Facts:
    key: bytes
    tags: frozenset[int]
    nested: tuple[bytes, ...]


def test_verdict_of_failures():
    assert Verdict.of([], None).ok
    refused = Verdict.of([Refusal(R.CHALLENGE_MISMATCH, "a"), Refusal(R.KEY_MISMATCH, "b")], None, ("x",))
    assert not refused.ok
    assert (refused.reasons, refused.details, refused.skipped) == ((R.CHALLENGE_MISMATCH, R.KEY_MISMATCH),
                                                                   ("a", "b"), ("x",))


def test_to_json_encodes_bytes_as_base64_and_sorts_sets():
    verdict = Verdict.refuse(Refusal(R.ROOT_UNTRUSTED, "no"), Facts(b"\x00\x01", frozenset({3, 1}), (b"\xff",)))
    doc = verdict.to_json()
    assert doc == {"ok": False, "reasons": ["root_untrusted"], "details": ["no"], "skipped": [],
                   "facts": {"key": "AAE=", "tags": [1, 3], "nested": ["/w=="]}}
    json.dumps(doc)
    assert Verdict.of([], None).to_json()["facts"] is None


def test_reason_codes_are_unique_strings():
    codes = [v for k, v in vars(R).items() if k.isupper() and isinstance(v, str)]
    assert len(codes) == len(set(codes)) > 40
    assert all(c == c.lower() and " " not in c for c in codes)
