"""mtls_proxy.globs: the same answers as the regex reading of the syntax, in linear time."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtls_proxy import globs
from mtls_proxy.globs import Glob, tokenize


def regex_reading(pattern: str, separator: str | None) -> re.Pattern[str]:
    """The former backtracking compilation, kept here as the reference of the semantics."""
    one = f"[^{re.escape(separator)}]" if separator else "."
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += one + "*"
            i += 1
        elif pattern[i] == "?":
            out += one
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out, re.DOTALL)


patterns = st.text(alphabet="ab/.*?", max_size=12)
subjects = st.text(alphabet="ab/.", max_size=14)
separators = st.sampled_from(["/", ".", None])


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pattern=patterns, subject=subjects, separator=separators)
def test_same_answer_as_the_regex_reading(pattern, subject, separator):
    expected = regex_reading(pattern, separator).fullmatch(subject) is not None
    glob = Glob(pattern, separator)
    assert glob.fullmatch(subject) is expected
    assert glob.fullmatch(subject) is expected  # memoised transitions give the same answer


@settings(max_examples=1000, deadline=None)
@given(pattern=patterns, subject=subjects, separator=separators, limit=st.integers(0, 6))
def test_past_the_memo_bound_the_same_answer(pattern, subject, separator, limit):
    """memo_limit 0..6: the NFA runs uncached from wherever the memo filled up."""
    expected = regex_reading(pattern, separator).fullmatch(subject) is not None
    assert Glob(pattern, separator, limit).fullmatch(subject) is expected


@pytest.mark.parametrize(("pattern", "separator", "subject", "expected"), [
    ("/api/**/delete", "/", "/api/x/y/delete", True),
    ("/api/**/delete", "/", "/api/delete", False),  # '**' between slashes needs the slashes
    ("/api/**", "/", "/api/", True),
    ("/api/**", "/", "/api", False),
    ("/a/*/b", "/", "/a/x/b", True),
    ("/a/*/b", "/", "/a/x/y/b", False),
    ("/a/*/b", "/", "/a//b", True),
    ("/a/?", "/", "/a/", False),
    ("/a/?", "/", "/a//", False),
    ("/a**z", "/", "/a/b/cz", True),  # '**' inside a segment still crosses segments
    ("*.example.com", ".", "a.example.com", True),
    ("*.example.com", ".", "a.b.example.com", False),
    ("**.example.com", ".", "a.b.example.com", True),
    ("device-*", None, "device-a.b/c", True),
    ("", None, "", True),
    ("", None, "x", False),
])
def test_examples(pattern, separator, subject, expected):
    assert Glob(pattern, separator).fullmatch(subject) is expected


def test_tokens():
    assert tokenize("/a/**/*?") == ((0, "/"), (0, "a"), (0, "/"), (3, ""), (0, "/"), (2, ""), (1, ""))
    assert tokenize("***") == ((3, ""), (2, ""))  # read left to right, as the regex reading did


def test_equal_and_hashable_by_pattern_and_separator():
    assert Glob("/a/*", "/") == Glob("/a/*", "/")
    assert Glob("/a/*", "/") != Glob("/a/*", None)
    assert len({Glob("/a/*", "/"), Glob("/a/*", "/")}) == 1


WORST = "/api/**/files/**/versions/**/delete"


def _attack_path(size: int) -> str:
    unit = "/files/versions"
    return "/api" + unit * (size // len(unit)) + "/x"  # almost matches everywhere, matches nowhere


def test_memo_stays_bounded_on_hostile_paths():
    glob = Glob(WORST, "/")
    for size in (1024, 4096, 16384, 65536):
        assert glob.fullmatch(_attack_path(size)) is False
    # the DFA of this pattern over the attack alphabet is tiny: states never grow with the path
    assert len(glob._sets) < 64
    assert glob._memoised <= globs.MEMO_LIMIT


def _best_time(glob: Glob, subject: str, rounds: int = 7, reps: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            glob.fullmatch(subject)
        best = min(best, time.perf_counter() - t0)
    return best


@pytest.mark.parametrize("memo", ["memoised", "unmemoised"])
@pytest.mark.parametrize("pattern", [WORST, "/**/**/**/**/**/**/x", "/a/*a*a*a*a*a*b", "**a????????"])
def test_doubling_the_path_at_most_about_doubles_the_time(memo, pattern):
    """Linear: 4x the path costs well under 16x (quadratic) and under the regex's 64x (cubic).

    The best of several rounds is compared, so a busy machine slows both sides alike; the
    bound (8x for 4x the input) leaves room for noise while any super-linear matcher fails it.
    """
    glob = Glob(pattern, "/", globs.MEMO_LIMIT if memo == "memoised" else 0)
    small = _attack_path(4096) if "api" in pattern else "/" + "a" * 4096
    large = _attack_path(16384) if "api" in pattern else "/" + "a" * 16384
    glob.fullmatch(small)  # warm the memo
    ratio = _best_time(glob, large) / _best_time(glob, small)
    assert ratio < 8, ratio


def test_regex_reading_is_what_this_replaces():
    """The reference really is super-linear on the worst pattern (so the timing test can fail)."""
    rx = regex_reading(WORST, "/")
    t_small = min(_timed(rx, _attack_path(512)) for _ in range(3))
    t_large = min(_timed(rx, _attack_path(2048)) for _ in range(3))
    assert t_large / t_small > 16


def _timed(rx: re.Pattern[str], subject: str) -> float:
    t0 = time.perf_counter()
    rx.fullmatch(subject)
    return time.perf_counter() - t0
