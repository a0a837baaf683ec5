"""The endpoint's access rules without a server: keys and digests, the caller check, the
per-key submission rate, and what the ingress hands a client of a record."""

from __future__ import annotations

import pytest

from inference.serving.access import (
    KEYS_ENV, Refused, RequestRate, caller, key_digest, load_key_digests, public_record,
)
from pipeline.config import load_config
from pipeline.config.loader import ConfigError


def _serving(*overrides: str):
    return load_config("tiny", overrides=list(overrides)).serving


def test_keys_come_from_the_file_as_keys_or_digests_and_from_the_environment(tmp_path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"# team keys\nalpha-key\n\nsha256:{key_digest('beta-key').upper()}\n")
    digests = load_key_digests(_serving(f"serving.api_keys_file={keys}"), environ={KEYS_ENV: " gamma , ,delta"})
    assert digests == {key_digest(k) for k in ("alpha-key", "beta-key", "gamma", "delta")}
    assert "alpha-key" not in digests  # only digests are held
    assert load_key_digests(_serving(), environ={}) == frozenset()


@pytest.mark.parametrize("content", [None, "# only a comment\n\n"])
def test_a_keys_file_that_is_missing_or_empty_is_a_config_error_naming_the_key(tmp_path, content) -> None:
    keys = tmp_path / "keys"
    if content is not None:
        keys.write_text(content)
    with pytest.raises(ConfigError, match="serving.api_keys_file"):
        load_key_digests(_serving(f"serving.api_keys_file={keys}"), environ={})


def _refused(*args) -> int:
    with pytest.raises(Refused) as refused:
        caller(*args)
    return refused.value.refusal.status


def test_the_caller_needs_a_right_bearer_key_except_on_healthz() -> None:
    digests = frozenset({key_digest("right")})
    assert caller(digests, "/v1/videos", "10.0.0.5", "Bearer right") == key_digest("right")
    assert caller(digests, "/v1/videos", "10.0.0.5", "bearer  right ") == key_digest("right")
    assert _refused(digests, "/v1/videos", "10.0.0.5", None) == 401
    assert _refused(digests, "/docs", "127.0.0.1", "Basic right") == 401
    assert _refused(digests, "/openapi.json", "127.0.0.1", "Bearer wrong") == 403
    assert caller(digests, "/healthz", "10.0.0.5", None) is None


def test_with_no_keys_only_loopback_clients_are_served() -> None:
    assert caller(frozenset(), "/v1/videos", "127.0.0.1", None) is None
    assert caller(frozenset(), "/v1/videos", "::1", None) is None
    assert _refused(frozenset(), "/v1/videos", "192.168.1.20", None) == 403
    assert _refused(frozenset(), "/v1/videos", None, None) == 403  # unknown client: not trusted
    assert caller(frozenset(), "/healthz", "192.168.1.20", None) is None


def test_the_submission_rate_is_per_key_over_a_sliding_minute() -> None:
    rate = RequestRate(per_minute=2)
    assert rate.take("a", now=0.0) is None and rate.take("a", now=10.0) is None
    assert rate.take("a", now=20.0) == pytest.approx(40.0)  # the first leaves the window at 60
    assert rate.take("b", now=20.0) is None
    assert rate.take("a", now=60.0) is None
    rate.forget_idle(now=200.0)
    assert rate.seen == {}
    assert RequestRate(per_minute=0).take("a", now=0.0) is None  # 0: no limit


def test_a_client_never_sees_the_owner_digest() -> None:
    assert public_record({"id": "x", "owner": "d" * 64, "status": "queued"}) == {"id": "x", "status": "queued"}


def test_without_keys_i2vgen_serve_listens_on_loopback_only(monkeypatch, capsys) -> None:
    from inference.serving.app import bind_host

    monkeypatch.delenv(KEYS_ENV, raising=False)
    assert bind_host(load_config("tiny").serving, "0.0.0.0") == "127.0.0.1"
    assert "127.0.0.1 only" in capsys.readouterr().out
    assert bind_host(load_config("tiny").serving, "::1") == "::1"
    monkeypatch.setenv(KEYS_ENV, "a-key")
    assert bind_host(load_config("tiny").serving, "0.0.0.0") == "0.0.0.0"
