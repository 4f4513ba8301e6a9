"""webcall.hooks.policy: restClientConfig, request bodies, decisions and OVERWRITE, without any I/O."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from webcall.hooks import policy as p


def test_request_body_is_the_client_object_plus_ids_less_rest_exclude() -> None:
    obj = {"name": "cam", "mediaSessionId": "m1", "sdp": "v=0...", "custom": {"k": 1}}
    body = p.request_body(obj, node_id="n", app_key="defaultApp", session_id="/1.2.3.4:5/6.7.8.9:8080")
    assert body == {**obj, "nodeId": "n", "appKey": "defaultApp", "sessionId": "/1.2.3.4:5/6.7.8.9:8080"}
    policy = p.parse_method_policy({"restExclude": "sdp, custom,nodeId"})
    body = p.request_body(obj, node_id="n", app_key="a", session_id="s", policy=policy)
    assert set(body) == {"name", "mediaSessionId", "appKey", "sessionId"}
    assert p.request_body(obj, node_id="n", app_key="a", session_id="s",
                          policy=p.parse_method_policy({"restPolicy": "DISABLE"})) is None


def test_rest_client_config_defaults_and_values() -> None:
    config = p.parse_rest_client_config({
        "publishStream": {"restPolicy": "OVERWRITE", "restOverwrite": "name,record", "restOnError": "LOG",
                          "clientExclude": "custom", "restExclude": ""},
        "playStream": {"restPolicy": "DISABLED"},  # old docs' spelling
    })
    pub = config.policy("publishStream")
    assert (pub.policy, pub.overwrite, pub.on_error, pub.client_exclude) == (
        "OVERWRITE", frozenset({"name", "record"}), "LOG", frozenset({"custom"}))
    assert config.policy("playStream").policy == "DISABLE"
    assert config.policy("stopStream") == p.DEFAULT_POLICY
    assert (p.DEFAULT_POLICY.policy, p.DEFAULT_POLICY.on_error) == ("NOTIFY", "FAIL")
    assert p.parse_rest_client_config(None) is p.DEFAULT_CONFIG


@pytest.mark.parametrize("bad", [[], "x", {"publishStream": 1}, {"publishStream": {"restPolicy": "SOMETIMES"}},
                                 {"publishStream": {"restOnError": 3}}, {"publishStream": {"restExclude": 5}}])
def test_bad_rest_client_config_raises_the_typed_error(bad) -> None:
    with pytest.raises(p.HookAnswerError):
        p.parse_rest_client_config(bad)


def test_decisions_from_answers() -> None:
    allowed = p.decide(200, b'{"name":"cam"}')
    assert allowed.allowed and allowed.body == {"name": "cam"} and allowed.status == 200
    denied = p.decide(403, b"")
    assert (denied.allowed, denied.info, denied.status) == (False, "Restricted access", 403)
    assert p.decide(403, b'{"message":"Not paid\\n up"}').info == "Not paid up"  # one printable line
    assert p.decide(500, b'{"info":"down"}').info == "down"
    assert p.decide(403, b"<html>nginx</html>").info == "Restricted access"  # never an HTML page
    assert len(p.decide(403, json.dumps({"message": "x" * 5000}).encode()).info) == p.MAX_INFO_CHARS
    # A non-200 denies even under LOG (WCS declines 4xx under LOG too); a bad 200 is an error.
    log = p.parse_method_policy({"restOnError": "LOG"})
    assert not p.decide(403, b"", log).allowed
    for raw in (b"not json", b"[1]", b"\xff", b"NaN"):
        bad = p.decide(200, raw)
        assert (bad.allowed, bad.info) == (False, "Restricted access") and bad.error
        assert p.decide(200, raw, log).allowed
    assert not p.decide_error("timeout").allowed and p.decide_error("timeout", log).allowed


def test_connect_answer_gives_the_rest_client_config() -> None:
    decision, config = p.decide_connect(200, json.dumps(
        {"restClientConfig": {"publishStream": {"restPolicy": "OVERWRITE", "restOverwrite": "name"}}}).encode())
    assert decision.allowed and config.policy("publishStream").policy == "OVERWRITE"
    decision, config = p.decide_connect(200, b'{"restClientConfig": 7}')
    assert not decision.allowed and config is p.DEFAULT_CONFIG
    decision, config = p.decide_connect(403, b"")
    assert not decision.allowed and config is p.DEFAULT_CONFIG


def test_overwrite_applies_only_listed_fields_under_overwrite() -> None:
    obj = {"name": "cam", "record": False, "custom": 1}
    answer = p.decide(200, b'{"name":"renamed","record":true,"custom":2}')
    overwrite = p.parse_method_policy({"restPolicy": "OVERWRITE", "restOverwrite": "name"})
    assert p.apply_answer(obj, answer, overwrite) == {"name": "renamed", "record": False, "custom": 1}
    assert p.apply_answer(obj, answer, p.DEFAULT_POLICY) is obj  # NOTIFY: never applied
    assert p.apply_answer(obj, p.decide(403, b""), overwrite) is obj
    assert p.client_view(obj, p.parse_method_policy({"clientExclude": "custom"})) == {"name": "cam",
                                                                                       "record": False}


def test_signature_is_hmac_md5_hex_of_the_exact_body() -> None:
    body = p.encode_body({"a": "é", "n": 1})
    expected = hmac.new(b"s3cret", body, hashlib.md5).hexdigest()
    assert p.sign(body, "s3cret") == f"WCS {expected}"
    assert p.check_signature(f"WCS {expected}", body, "s3cret")
    assert not p.check_signature(f"WCS {expected}", body + b" ", "s3cret")
    assert not p.check_signature(None, body, "s3cret")


def test_keep_alive_only_403_terminates() -> None:
    assert not p.keep_alive_decision(403)
    assert all(p.keep_alive_decision(s) for s in (200, 404, 500, None))
