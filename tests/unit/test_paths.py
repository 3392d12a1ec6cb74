"""mtls_proxy.paths: the path the policy judges, and every target refused as ambiguous."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mtls_proxy.paths import AmbiguousPath, normalize_path, remove_dot_segments, split_target


@pytest.mark.parametrize(
    "raw",
    [
        b"/admin",
        b"//admin",
        b"///admin",
        b"/./admin",
        b"/api/../admin",
        b"/api/x/../../admin",
        b"/../admin",  # cannot climb above the root
        b"/%61dmin",
        b"/%61%64%6D%69%6e",  # upper- and lower-case hex digits
        b"/api/%2e%2e/admin",  # encoded dot-segments are decoded first, then removed
        b"/%2e/admin",
    ],
)
def test_every_spelling_of_admin_is_judged_as_admin(raw: bytes) -> None:
    assert normalize_path(raw) == "/admin"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"/", "/"),
        (b"/api/", "/api/"),  # a trailing slash is kept: /api/ and /api differ for the policy's prefixes
        (b"/api", "/api"),
        (b"/api//", "/api/"),
        (b"/api/.", "/api/"),
        (b"/api/x/..", "/api/"),
        (b"/api/..", "/"),
        (b"/..", "/"),
        (b"/a/b/c/./../d", "/a/b/d"),
        (b"/a%20b;c", "/a b;c"),  # decoded once; ';' is data, not a separator
        (b"/caf%C3%A9", "/caf\u00e9"),  # valid UTF-8 decodes
        (b"/%25", "/%"),  # decoded exactly once: %25 -> '%' and no further
        (b"/%2541", "/%41"),
        (b"/a.b/..c/...", "/a.b/..c/..."),  # only exact '.' and '..' segments are special
    ],
)
def test_normal_forms(raw: bytes, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"/api%2Fadmin", "encoded_separator"),
        (b"/api%2fadmin", "encoded_separator"),
        (b"/api%5Cadmin", "encoded_separator"),
        (b"/api%5cadmin", "encoded_separator"),
        (b"/admin%00", "control_character"),
        (b"/admin%0a", "control_character"),
        (b"/admin%1F", "control_character"),
        (b"/admin%7f", "control_character"),
        (b"/%zz", "bad_percent_encoding"),
        (b"/%4", "bad_percent_encoding"),  # truncated at the end
        (b"/%", "bad_percent_encoding"),
        (b"/%g1", "bad_percent_encoding"),
        (b"/%C3", "invalid_utf8"),  # a lone lead byte
        (b"/%C3%28", "invalid_utf8"),
        (b"/%FF", "invalid_utf8"),
        (b"/%C0%AF", "invalid_utf8"),  # overlong '/', must never become a separator
        (b"/api\\admin", "backslash"),
        (b"\\admin", "not_origin_form"),
        (b"/admin#frag", "fragment"),
        (b"/a b", "control_character"),  # raw space
        (b"/a\tb", "control_character"),
        (b"/a\x00b", "control_character"),
        (b"/a\x7fb", "control_character"),
        (b"/caf\xc3\xa9", "control_character"),  # raw (unencoded) non-ASCII bytes
        (b"admin", "not_origin_form"),
        (b"*", "not_origin_form"),
        (b"http://example.com/admin", "not_origin_form"),  # absolute-form is not proxied
        (b"", "not_origin_form"),
    ],
)
def test_ambiguous_targets_are_refused_with_their_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(AmbiguousPath) as info:
        normalize_path(raw)
    assert info.value.reason == reason
    assert str(info.value) == reason
    assert isinstance(info.value, ValueError)


def test_split_target_keeps_the_query_untouched() -> None:
    assert split_target(b"/a/b?x=%41&y=1&y=2") == (b"/a/b", b"x=%41&y=1&y=2")
    assert split_target(b"/a?") == (b"/a", b"")
    assert split_target(b"/a") == (b"/a", b"")
    assert split_target(b"/a?b?c") == (b"/a", b"b?c")  # only the first '?' separates


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/a/./b", "/a/b"), ("/a/../../b", "/b"), ("/a//b", "/a/b"), ("/", "/"), ("/a/b/", "/a/b/")],
)
def test_remove_dot_segments(path: str, expected: str) -> None:
    assert remove_dot_segments(path) == expected


_segment = st.one_of(
    st.sampled_from([".", "..", ""]),
    st.text(alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x2FF, exclude_characters="/\\#%?",
                                  exclude_categories=("Cc",)),
            min_size=1, max_size=6),
)


@given(st.lists(_segment, max_size=8))
def test_normal_form_is_clean_and_idempotent(segments: list[str]) -> None:
    raw = ("/" + "/".join(segments)).encode("utf-8")
    encoded = quote(raw.decode("utf-8"), safe="/").encode("ascii")
    result = normalize_path(encoded)
    assert result.startswith("/")
    assert "//" not in result
    assert "/./" not in result and not result.endswith("/.")
    assert "/../" not in result and not result.endswith("/..")
    # percent-encoding the normal form again gives the same normal form
    assert normalize_path(quote(result, safe="/").encode("ascii")) == result


@pytest.mark.parametrize(
    ("raw", "max_length", "max_segments", "reason"),
    [
        (b"/" + b"a" * 8191, 8192, 256, None),  # exactly at the length cap
        (b"/" + b"a" * 8192, 8192, 256, "path_too_long"),
        (b"/%61" * 3000, 8192, 4096, "path_too_long"),  # the raw bytes count, before decoding
        (b"/a" * 256, 8192, 256, None),  # exactly at the segment cap
        (b"/a" * 257, 8192, 256, "too_many_segments"),
        (b"/a/.." * 200, 8192, 256, "too_many_segments"),  # dot-segments count: the upstream routes them
        (b"/" * 300, 8192, 256, "too_many_segments"),  # empty segments too
        (b"/a" * 5000, 8192, 256, "path_too_long"),  # the length is checked first
        (b"/abc/d", 5, 256, "path_too_long"),
        (b"/abc/d", 6, 1, "too_many_segments"),
    ],
)
def test_length_and_segment_caps(raw: bytes, max_length: int, max_segments: int, reason: str | None) -> None:
    if reason is None:
        assert normalize_path(raw, max_length, max_segments)
    else:
        with pytest.raises(AmbiguousPath) as info:
            normalize_path(raw, max_length, max_segments)
        assert info.value.reason == reason


def test_caps_have_safe_defaults() -> None:
    assert normalize_path(b"/a" * 256) == "/a" * 256
    with pytest.raises(AmbiguousPath, match="too_many_segments"):
        normalize_path(b"/a" * 257)
    with pytest.raises(AmbiguousPath, match="path_too_long"):
        normalize_path(b"/" + b"a" * 8192)
