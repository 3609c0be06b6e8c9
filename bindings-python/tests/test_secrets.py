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
