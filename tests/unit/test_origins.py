"""webcall.hooks.origins: the WebSocket Origin allow-list (--allow-origins, WCS's allow_domains)."""

from __future__ import annotations

import pytest

from webcall.hooks.origins import origin_allowed, parse_allow_list

LIST = parse_allow_list("https://example.com, *.example.org, plain.net, ws.net:8080, http://[::1]:9000")


@pytest.mark.parametrize(("origin", "allowed"), [
    ("https://example.com", True),
    ("https://EXAMPLE.com.", True),  # case and a trailing dot
    ("https://example.com:443", True),  # the default port, spelled out
    ("https://example.com:8443", False),
    ("http://example.com", False),  # scheme given: it must match
    ("https://evil-example.com", False),
    ("https://example.com.evil.net", False),
    ("https://a.example.org", True),
    ("http://a.b.example.org:3000", True),  # wildcard without scheme or port: any of them
    ("https://example.org", False),  # *. is for subdomains only
    ("https://xexample.org", False),
    ("http://plain.net:1234", True),
    ("https://plain.net", True),
    ("ftp://plain.net", False),  # no scheme in the pattern means http or https
    ("http://ws.net:8080", True),
    ("http://ws.net", False),
    ("http://[::1]:9000", True),
    ("http://[::1]", False),
    ("null", False),
    ("", False),
    ("garbage", False),
    ("https://", False),
    ("https://example.com/path", False),
    ("https://user@example.com", False),
    ("https://example.com:99999", False),
    (None, True),  # no Origin header: not a browser (see the module's docstring)
])
def test_origin_matching(origin, allowed) -> None:
    assert origin_allowed(origin, LIST) is allowed


def test_empty_list_and_star_allow_everything() -> None:
    assert origin_allowed("https://anything.example", parse_allow_list(""))
    assert origin_allowed("null", parse_allow_list(" , "))
    assert origin_allowed("whatever", parse_allow_list("*"))
    assert origin_allowed("null", parse_allow_list("null"))


@pytest.mark.parametrize("bad", ["https://a.com/x", "a.*.com", "*", "https://a.com:x", "://a.com", "*.", "a b"])
def test_bad_patterns(bad) -> None:
    if bad == "*":
        assert parse_allow_list(bad)
        return
    with pytest.raises(ValueError):
        parse_allow_list(bad)
