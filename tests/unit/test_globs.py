"""mtls_proxy.globs: the same answers as the regex reading of the syntax, in linear time."""

from __future__ import annotations

import random
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


def test_work_per_character_is_constant_once_the_memo_holds_the_pattern():
    """Timing-independent: past the first path, longer paths compute no new transition at all,
    so matching them is one memo lookup per character (the DFA's size depends on the pattern)."""
    glob = Glob(WORST, "/")
    assert glob.fullmatch(_attack_path(1024)) is False
    after_first = glob.memoised
    for size in (4096, 16384, 65536):
        assert glob.fullmatch(_attack_path(size)) is False
    assert glob.memoised == after_first < 64


def test_memo_does_not_grow_with_the_subject_alphabet():
    """Characters the pattern does not name share one class: 10,000 distinct ones add nothing."""
    glob = Glob("/api/**/x", "/")
    glob.fullmatch("/api/zz/x")  # 'z' is in the class of every character the pattern does not name
    before = glob.memoised
    assert glob.fullmatch("/api/" + "".join(chr(0x4E00 + i) for i in range(10_000)) + "/x") is True
    assert glob.memoised == before
    assert glob.memoised <= len(glob._sets) * (len({"/", "a", "p", "i", "x"}) + 1)


def test_memo_limit_is_kept():
    glob = Glob("**a????????", None, memo_limit=50)  # a DFA with 2^9 states exists; only 50 are stored
    rng = random.Random(7)
    subject = "".join(rng.choice("ab") for _ in range(2000))
    assert glob.fullmatch(subject) is (regex_reading("**a????????", None).fullmatch(subject) is not None)
    assert glob.memoised == 50


def _cost_per_char(glob: Glob, subject: str, rounds: int = 9) -> float:
    """Best of several rounds, each long enough (~20 ms) that timer and scheduler noise are small."""
    reps = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(reps):
            glob.fullmatch(subject)
        if time.perf_counter() - t0 > 0.02:
            break
        reps *= 2
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            glob.fullmatch(subject)
        best = min(best, time.perf_counter() - t0)
    return best / reps / len(subject)


@pytest.mark.parametrize("memo", ["memoised", "unmemoised"])
@pytest.mark.parametrize("pattern", [WORST, "/**/**/**/**/**/**/x", "/a/*a*a*a*a*a*b", "**a????????"])
def test_time_per_character_does_not_grow_with_the_path(memo, pattern):
    """Linear: the time per character on an 8x longer path stays the same (quadratic would be 8x,
    the regex's cubic 64x). Best-of-rounds on both sides, so a busy machine slows both alike; the
    bound (3x) leaves room for noise on a loaded machine while any super-linear matcher fails it."""
    glob = Glob(pattern, "/", globs.MEMO_LIMIT if memo == "memoised" else 0)
    small = _attack_path(2048) if "api" in pattern else "/" + "a" * 2048
    large = _attack_path(16384) if "api" in pattern else "/" + "a" * 16384
    glob.fullmatch(small)  # warm the memo
    ratio = _cost_per_char(glob, large) / _cost_per_char(glob, small)
    assert ratio < 3, ratio  # the cost per character does not grow with the path (quadratic: 8x, regex: 64x)


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
