"""No token value in any repr, str, exception or log record."""

from __future__ import annotations

import logging

import pytest

import tokenlease
from tokenlease import FetchedToken, Manager


def test_no_token_value_in_reprs_and_logs(server, caplog):
    caplog.set_level(logging.DEBUG, logger="tokenlease")
    with Manager.from_config(server.config()) as manager:
        info = manager.token_info()
        value = info.value
        status = manager.status()
        manager.invalidate(info)
        manager.token()
        tokenlease.flush_events()
        texts = [repr(manager), str(manager), repr(info), str(info), repr(status), str(status)]
        for text in texts:
            assert value not in text, text
        assert "value" not in repr(info)
        assert caplog.records, "events are logged under 'tokenlease'"
        assert all(record.name == "tokenlease" for record in caplog.records)
        for record in caplog.records:
            assert value not in record.getMessage()
            assert value not in repr(record.__dict__)
        messages = " ".join(r.getMessage() for r in caplog.records)
        assert "refresh_succeeded" in messages and "invalidated" in messages
    with pytest.raises(tokenlease.ClosedError) as err:
        manager.token()
    assert value not in str(err.value) and value not in repr(err.value)


def test_failures_are_logged_as_warnings(server, caplog):
    caplog.set_level(logging.DEBUG, logger="tokenlease")
    server.control(outage={"mode": "status503", "duration_ms": None})
    with Manager.from_config(server.config()) as manager:
        with pytest.raises(tokenlease.TransientError):
            manager.token()
        tokenlease.flush_events()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "refresh_failed" in warnings[0].getMessage()
    assert warnings[0].tokenlease_event["kind"] == "transient"


def test_fetched_token_repr_hides_secrets():
    token = FetchedToken(value="very-secret-access", refresh_token="very-secret-refresh", expires_in=5)
    assert "very-secret" not in repr(token)
    assert "very-secret" not in str(token)


def test_session_login_secrets_never_reach_errors_events_logs_or_keys(server, caplog):
    """A password rendered into a login URL's path and query, and a password in the URL's
    userinfo, appear in no error, event, log record, status, repr or store key."""
    caplog.set_level(logging.DEBUG, logger="tokenlease")
    password = "py-session-password-7f3a"
    url_password = "py-url-password-91c2"
    host = server.url.split("://", 1)[1]
    config = {
        "source": {
            "type": "session_login",
            "credentials": {"username": "svc", "password": password},
            "session": {
                "login": {
                    "url": f"http://svc:{url_password}@{host}/fault/status/500/login/"
                    "{{password}}?p={{password}}",
                    "json": {"username": "{{username}}", "password": "{{password}}"},
                },
                "token": {"json_pointer": "/session/id"},
                "lifetime_s": 900,
                "send": {"header": "vmware-api-session-id"},
            },
        },
        "policy": {"jitter_fraction": 0.0},
    }
    events = []
    with Manager.from_config(config, listener=events.append) as manager:
        with pytest.raises(tokenlease.TokenleaseError) as info:
            manager.token()
        tokenlease.flush_events()
        texts = [
            str(info.value),
            repr(info.value),
            repr(manager),
            str(manager.status()),
            manager.key,
            str(events),
            " ".join(record.getMessage() for record in caplog.records),
        ]
    assert "{{password}}" in str(info.value), info.value
    for text in texts:
        assert password not in text, text
        assert url_password not in text, text
