"""``judge(head, conn, state, now) -> Verdict``: the only place that decides whether a request reaches Django.

Called when a request is about to be forwarded (not when it is parsed), with the state
and the time current then, for every kind of connection: fresh, keep-alive, resumed,
pipelined. In order: the head's framing, the target (normalised, and the "both readings"
rule), Host against SNI and the served names, the certificate's standing
(:func:`judge_peer`: EKU, CA leaf, trust anchor or pin still configured, chain depth, validity of
leaf and chain, CRL serials of every certificate in the chain, CRL freshness, deny-list),
the policy rules and the rule's body limit. Pure: no I/O, no asyncio, no clock of its own.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple
from urllib.parse import unquote

from mtls_proxy.certs import PeerIdentity
from mtls_proxy.judging.head import RequestHead, authority_name
from mtls_proxy.judging.outcomes import OUTCOMES
from mtls_proxy.paths import AmbiguousPath, normalize_path, split_target
from mtls_proxy.trust import certificate_refusal

if TYPE_CHECKING:
    from mtls_proxy.policy import Policy
    from mtls_proxy.state import RuntimeState, TrustFacts

_FAR_FUTURE = dt.datetime.max.replace(tzinfo=dt.UTC)
_FAR_PAST = dt.datetime.min.replace(tzinfo=dt.UTC)
_MEMO_LIMIT = 4096
#: refusals that depend on the time given (rare: not memoised, so the result never depends on call order)
_TIME_BOUND = frozenset({"cert_not_yet_valid", "cert_expired", "ca_not_yet_valid", "ca_expired", "crl_expired"})


@dataclass(frozen=True, slots=True)
class ConnectionFacts:
    """What the TLS handshake established; fixed for the connection's life."""

    peer: PeerIdentity | None  # None: no certificate (a client_auth: optional listener)
    sni: str | None = None
    client_ip: bytes = b"-"

    @property
    def cn(self) -> str:
        """The peer's common name for logs ("-" without a certificate)."""
        return self.peer.common_name if self.peer is not None else "-"

    @property
    def fp16(self) -> str:
        """The first 16 hex digits of the peer certificate's SHA-256, for logs ("-" without one)."""
        return self.peer.fingerprint_sha256[:16] if self.peer is not None else "-"


@dataclass(frozen=True, slots=True)
class PeerVerdict:
    """The certificate's standing, and the window of time in which it stays what it is."""

    reason: str | None  # None: in good standing
    valid_from: float
    valid_until: float

    @property
    def allowed(self) -> bool:
        return self.reason is None


class Verdict(NamedTuple):
    """The decision on one request (a tuple: made on every request, it must be cheap to build)."""

    allowed: bool
    reason: str
    rule: str = "-"
    max_body: int = 0
    path: str = ""

    @property
    def status(self) -> int:
        return 200 if self.allowed else OUTCOMES[self.reason].status


def _refused(reason: str, rule: str = "-") -> Verdict:
    return Verdict(False, reason, rule)


def judge_peer(peer: PeerIdentity, state: RuntimeState, now: float) -> PeerVerdict:
    """The checks that depend on the certificate chain, the trust material and the time only.

    Memoised per chain in the state (a new state starts empty), and only reused while ``now``
    is inside the window the verdict was computed for: the result is the same as computing it.
    """
    key = (peer.der, peer.chain_der)
    memo = state.peer_verdicts
    known: PeerVerdict | None = memo.get(key)
    if known is not None and known.valid_from <= now < known.valid_until:
        return known
    verdict = _judge_peer(peer, state, now)
    if len(memo) >= _MEMO_LIMIT:
        memo.clear()
    memo[key] = verdict
    return verdict


def _judge_peer(peer: PeerIdentity, state: RuntimeState, now: float) -> PeerVerdict:
    trust = state.trust
    starts = [peer.not_before, *(c.not_before for c in peer.chain)]
    ends = [peer.not_after, *(c.not_after for c in peer.chain)]
    issuers = {peer.issuer_dn, *(c.issuer_dn for c in peer.chain)}
    for issuer in issuers:
        crl_end = trust.crl_expiry(issuer)
        if crl_end is not None:
            ends.append(crl_end)
    valid_from = max(starts, default=_FAR_PAST).timestamp()
    valid_until = min(ends, default=_FAR_FUTURE).timestamp()
    reason = peer_standing(peer, state.trust, state.policy, now)
    if reason in _TIME_BOUND:
        return PeerVerdict(reason, now, now)  # an empty window: never reused, judged afresh each time
    if reason is not None:
        return PeerVerdict(reason, float("-inf"), float("inf"))  # holds for the life of this state
    return PeerVerdict(None, valid_from, valid_until)


def peer_standing(peer: PeerIdentity, trust: TrustFacts, policy: Policy, now: float) -> str | None:
    """Why the certificate (with its chain) is refused at ``now`` by this trust material and deny-list, or None.

    The one definition of a certificate's standing: :func:`judge_peer` (per request and on
    re-judging) and ``check --client-cert`` (:mod:`mtls_proxy.diagnose`) both call it.
    """
    refusal = certificate_refusal(peer, trust.anchors, trust.pinned)  # EKU, CA leaf, anchor or pin
    if refusal is not None:
        return refusal
    if trust.max_chain and len(peer.chain_der) > trust.max_chain:
        return "chain_too_long"
    if (peer.issuer_dn, peer.serial) in trust.revoked:
        return "revoked"
    for link in peer.chain:
        if (link.issuer_dn, link.serial) in trust.revoked:
            return "ca_revoked"
    if policy.is_denylisted(peer):
        return "denylisted"
    if peer.not_before.timestamp() > now:
        return "cert_not_yet_valid"
    if peer.not_after.timestamp() <= now:
        return "cert_expired"
    for link in peer.chain:
        if link.not_before.timestamp() > now:
            return "ca_not_yet_valid"
        if link.not_after.timestamp() <= now:
            return "ca_expired"
    for issuer in (peer.issuer_dn, *(c.issuer_dn for c in peer.chain)):
        crl_end = trust.crl_expiry(issuer)
        if crl_end is not None and crl_end.timestamp() <= now:
            return "crl_expired"
    return None


def _framing(head: RequestHead) -> str | None:
    """Refusals the head's own fields decide, before its target or its client are looked at."""
    if head.transfer_encoding is not None and head.transfer_encoding != b"chunked":
        # llhttp accepts "gzip, chunked"; the body is re-framed as plain chunked, so Django would get
        # gzip bytes with no coding left to say so: refuse instead.
        return "unsupported_transfer_coding"
    if head.expect and not head.expect_continue:
        return "expectation_failed"
    if head.host_count > 1:
        return "multiple_host"
    if head.version not in ("1.1", "1.0", "2"):
        return "http_version_not_supported"
    if head.chunked and head.version == "1.0":
        return "te_in_http10"
    if head.host_count == 0 or not head.host.strip():  # HTTP/1.0 too: Django routes and checks ALLOWED_HOSTS
        return "missing_host"
    if head.upgrade_requested and (not head.is_websocket or head.has_body):
        return "bad_upgrade"
    return None


def judge(head: RequestHead, conn: ConnectionFacts, state: RuntimeState, now: float) -> Verdict:
    """Decide one request by the rules of ``state`` at time ``now`` (seconds since the epoch)."""
    reason = _framing(head)
    if reason is not None:
        return _refused(reason)
    raw_path, _ = split_target(head.target)
    limits = state.settings.limits
    try:
        path = normalize_path(raw_path, limits.max_path_length, limits.max_path_segments)
    except AmbiguousPath as exc:
        return _refused(exc.reason)
    host_name = authority_name(head.host)
    if host_name is None:
        return _refused("bad_host")
    server_names = state.settings.tls.server_names
    if (conn.sni is not None and host_name != conn.sni) or (server_names and host_name not in server_names):
        return _refused("host_sni_mismatch")
    peer = conn.peer
    if peer is not None:
        standing = judge_peer(peer, state, now)
        if standing.reason is not None:
            return _refused(standing.reason)
    method = head.method.decode("ascii")
    decision = state.policy.evaluate_rules(peer, method, path)
    # what the upstream routes: decoded, dot-segments kept
    routed = unquote(raw_path.decode("ascii")) if b"%" in raw_path else raw_path.decode("ascii")
    if decision.allowed and routed != path:
        # The target is forwarded as sent and Django does not remove dot-segments: "/admin/../api" is
        # judged as /api but routed under /admin. Both readings must be allowed.
        routed_decision = state.policy.evaluate_rules(peer, method, routed)
        if not routed_decision.allowed:
            decision = routed_decision
    if not decision.allowed:
        return _refused(decision.reason, decision.rule)
    max_body = decision.max_body_size if decision.max_body_size is not None else limits.max_body_size
    if head.content_length is not None and head.content_length > max_body:
        return _refused("body_too_large", decision.rule)
    return Verdict(True, "allowed", decision.rule, max_body, path)
