"""mtls_proxy.policy_check: an earlier allow rule that provably shadows a later deny rule is reported."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtls_proxy.config import parse_size
from mtls_proxy.errors import ConfigProblem
from mtls_proxy.policy import Policy, compile_policy
from mtls_proxy.policy_check import unreachable_denies


def compile_ok(rules) -> Policy:
    policy, problems = compile_policy({"rules": rules}, "policy", parse_size)
    assert problems == [] and policy is not None
    return policy


def allow(paths=None, methods=None, clients="any"):
    rule = {"name": "allow", "clients": clients}
    if paths is not None:
        rule["paths"] = paths
    if methods is not None:
        rule["methods"] = methods
    return rule


def deny(paths=None, methods=None):
    rule = {"name": "deny", "action": "deny"}
    if paths is not None:
        rule["paths"] = paths
    if methods is not None:
        rule["methods"] = methods
    return rule


@pytest.mark.parametrize(("earlier", "later"), [
    (allow(["/api/"]), deny(["/api/admin/"])),  # prefix in prefix
    (allow(["/api/"]), deny(["/api/export"])),  # exact under a prefix
    (allow(["/api/"]), deny(["/api"])),  # '/api/' also matches '/api' and '/api/'
    (allow(["/api/x/"]), deny(["/api/x"])),  # the deny's two paths, '/api/x' and '/api/x/'
    (allow(["/api/"]), deny(["/api/*/delete", "/api/x/**"])),  # globs under a prefix
    (allow(["/api/**"]), deny(["/api/x/"])),  # a prefix glob
    (allow(["/a/*/b"]), deny(["/a/*/b"])),  # the same glob
    (allow(["/a/*/b"]), deny(["/a/x/b"])),  # exact path the glob matches, with its slash form
    (allow(), deny(["/admin/"])),  # no paths: every path
    (allow(["/"]), deny()),  # '/' covers a rule without paths
    (allow(["/**"]), deny()),
    (allow(["/api/"], ["GET", "POST"]), deny(["/api/x"], ["POST"])),
    (allow(["/api/"], ["GET"]), deny(["/api/x"], ["HEAD"])),  # GET includes HEAD
    (allow(["/api/"], clients=[{"subject": {"CN": "ops"}}]), deny(["/api/x"])),  # clients do not matter
])
def test_shadowed_deny_is_reported(earlier, later):
    policy = compile_ok([earlier, later])
    assert unreachable_denies(policy) == [ConfigProblem(
        "policy.rules[1]",
        "deny rule 'deny' is unreachable: the earlier allow rule 'allow' (policy.rules[0]) matches every "
        "method and path it does, and the first matching rule decides; move the deny rule above it",
    )]


@pytest.mark.parametrize(("earlier", "later"), [
    (allow(["/api/"]), deny(["/admin/"])),
    (allow(["/api/x/"]), deny(["/api/"])),  # narrower prefix
    (allow(["/api/"], ["GET"]), deny(["/api/x"])),  # all methods are not only GET
    (allow(["/api/"], ["GET"]), deny(["/api/x"], ["GET", "DELETE"])),
    (allow(["/api/*"]), deny(["/api/x/"])),  # '*' stays in one segment
    (allow(["/api/*"]), deny(["/api/**"])),
    (allow(["/a/*/b"]), deny(["/a/?/b"])),  # covered in fact, but not provable by these rules: no warning
    (allow(["/api/x"]), deny(["/api/x/"])),  # exact does not cover the prefix's subpaths
    (allow(["/api/"]), deny()),
    (allow(["/api/"]), deny(["/api/x", "/other"])),  # every pattern must be covered
])
def test_no_warning_without_proof(earlier, later):
    assert unreachable_denies(compile_ok([earlier, later])) == []


def test_deny_before_allow_and_deny_after_deny_are_fine():
    assert unreachable_denies(compile_ok([deny(["/api/x"]), allow(["/api/"])])) == []
    first = {**deny(["/api/"]), "name": "d1"}
    assert unreachable_denies(compile_ok([first, deny(["/api/x"])])) == []


def test_one_warning_per_deny_naming_the_first_shadowing_rule():
    policy = compile_ok([
        {**allow(["/"]), "name": "everything"},
        {**allow(["/api/"]), "name": "api"},
        {**deny(["/api/x"]), "name": "no-x"},
        {**deny(["/api/y"]), "name": "no-y"},
    ])
    warnings = unreachable_denies(policy, "policy")
    assert [(w.key_path, "'everything' (policy.rules[0])" in w.message) for w in warnings] == [
        ("policy.rules[2]", True), ("policy.rules[3]", True)]


SEGS = ["a", "b", "api", "x"]
pattern_st = st.builds(
    lambda parts, kind: "/" + "/".join(parts) + ("/" if kind == "prefix" else ""),
    st.lists(st.sampled_from([*SEGS, "*", "**", "?", "a*"]), max_size=3), st.sampled_from(["prefix", "exact"]))
methods_st = st.none() | st.lists(st.sampled_from(["GET", "HEAD", "POST"]), min_size=1, unique=True)
paths_st = st.none() | st.lists(pattern_st, min_size=1, max_size=2)
request_path_st = st.lists(st.sampled_from([*SEGS, "c", "ab", ""]), max_size=4).map(lambda p: "/" + "/".join(p))


def _rule(name, paths, methods, action):
    rule = {"name": name, "action": action, **({"clients": "any"} if action == "allow" else {})}
    if paths is not None:
        rule["paths"] = paths
    if methods is not None:
        rule["methods"] = methods
    return rule


@settings(max_examples=1500, deadline=None)
@given(p1=paths_st, m1=methods_st, p2=paths_st, m2=methods_st,
       probes=st.lists(st.tuples(st.sampled_from(["GET", "HEAD", "POST", "PUT"]), request_path_st), max_size=30))
def test_a_warning_is_always_true(p1, m1, p2, m2, probes):
    """Soundness: when a warning is given, no request reaches the deny rule."""
    policy = compile_ok([_rule("allow", p1, m1, "allow"), _rule("deny", p2, m2, "deny")])
    if unreachable_denies(policy):
        earlier, later = policy.rules
        near = [q.replace("**", fill).replace("*", "a").replace("?", "b") + tail
                for q in (p2 or ["/"]) for fill in ("a/b", "", "x") for tail in ("", "/", "x", "/c")]
        for method, path in probes + [(m, q) for m in ("GET", "HEAD", "POST") for q in near]:
            assert not later.applies(method, path) or earlier.applies(method, path)
