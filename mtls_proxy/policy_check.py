"""Warnings about a policy that loads but does not do what it says (``mtls-proxy check``).

The first rule whose methods and path match decides, whatever its clients: an earlier allow
rule that matches every request a later deny rule matches makes that deny dead, and the
requests it was written to refuse are allowed to the allow rule's clients. Only proven
cases are reported: a rule covers another when its methods include the other's and each of
the other's path patterns lies inside one of its own patterns (prefix in prefix, exact path
or glob under a prefix, the same glob, anything under ``/``). Pure; no I/O.
"""

from __future__ import annotations

from mtls_proxy.errors import ConfigProblem
from mtls_proxy.globs import Glob
from mtls_proxy.policy import PathMatcher, Policy, Rule


def unreachable_denies(policy: Policy, key_path: str = "policy") -> list[ConfigProblem]:
    """One warning per deny rule that an earlier allow rule provably shadows."""
    out: list[ConfigProblem] = []
    for j, later in enumerate(policy.rules):
        if not later.deny:
            continue
        for i, earlier in enumerate(policy.rules[:j]):
            if not earlier.deny and covers(earlier, later):
                out.append(ConfigProblem(
                    f"{key_path}.rules[{j}]",
                    f"deny rule {later.name!r} is unreachable: the earlier allow rule {earlier.name!r} "
                    f"({key_path}.rules[{i}]) matches every method and path it does, and the first "
                    f"matching rule decides; move the deny rule above it",
                ))
                break
    return out


def covers(earlier: Rule, later: Rule) -> bool:
    """Every (method, path) ``later`` applies to, ``earlier`` applies to (proven, else False)."""
    if earlier.methods is not None and (later.methods is None or not later.methods <= earlier.methods):
        return False
    if earlier.paths is None:
        return True
    if later.paths is None:
        return _covers_prefix(earlier.paths, "/")
    inner = later.paths
    return (
        all(earlier.paths.matches(x) and earlier.paths.matches(x + "/") for x in inner.exact)
        and all(_covers_prefix(earlier.paths, p) for p in inner.prefixes)
        and all(_covers_glob(earlier.paths, g) for g in inner.globs)
    )


def _covers_prefix(outer: PathMatcher, prefix: str) -> bool:
    """Every path starting with ``prefix`` (and ``prefix`` without its slash) matches ``outer``."""
    starts = any(prefix.startswith(q) for q in outer.prefixes) or any(
        g.is_prefix and prefix.startswith(g.literal_prefix) for g in outer.globs
    )
    return starts and (prefix == "/" or outer.matches(prefix[:-1]))


def _covers_glob(outer: PathMatcher, glob: Glob) -> bool:
    if glob in outer.globs:
        return True
    lead = glob.literal_prefix  # every match of ``glob`` (and with a slash added) starts with it
    return any(lead.startswith(q) for q in outer.prefixes) or any(
        g.is_prefix and lead.startswith(g.literal_prefix) for g in outer.globs
    )
