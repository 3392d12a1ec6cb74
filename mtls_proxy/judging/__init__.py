"""The version-neutral request judgment: pure functions, no I/O, no asyncio.

Every frontend (HTTP/1.1 today) turns what it parsed into a :class:`RequestHead`;
:func:`judge` is the only place that decides whether that request may reach Django,
and it is called when the request is about to be forwarded, with the state and the
time current then. :func:`judge_peer` is its certificate-only part, which the server
also runs over every open connection when the state changes or a certificate or CRL
expires.
"""

from mtls_proxy.judging.head import RequestHead, authority_name
from mtls_proxy.judging.judge import ConnectionFacts, PeerVerdict, Verdict, judge, judge_peer
from mtls_proxy.judging.outcomes import Outcome, outcome

__all__ = [
    "ConnectionFacts",
    "Outcome",
    "PeerVerdict",
    "RequestHead",
    "Verdict",
    "authority_name",
    "judge",
    "judge_peer",
    "outcome",
]
