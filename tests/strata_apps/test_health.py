"""Redis round trip against a real redis-server on loopback, with and without credentials."""

from __future__ import annotations

import pytest
import redis
from pydantic import SecretStr

from strata.errors import StackError
from strata.stack import redis_client
from strata_apps.health import redis_round_trip


def test_round_trip_with_auth(redis_server):
    result = redis_round_trip(redis_server)
    assert result["redis_version"].count(".") == 2
    assert result["round_trip_ms"] > 0


def test_server_refuses_clients_without_password(redis_server):
    client = redis_client(redis_server, password="")
    with pytest.raises(redis.AuthenticationError):
        client.set("strata:probe", "x")


def test_wrong_password_is_a_clear_stack_error(redis_server):
    wrong = redis_server.model_copy(update={"redis_writer_password": SecretStr("not-the-password")})
    with pytest.raises(StackError, match="refused our credentials"):
        redis_round_trip(wrong)


def test_unreachable_server_names_the_fix(redis_server):
    elsewhere = redis_server.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with pytest.raises(StackError, match=r"scripts/redis\.sh start"):
        redis_round_trip(elsewhere)


def test_lookup_status_tells_no_live_version_from_unreachable(redis_server):
    from strata.stack import redis_client
    from strata_apps.health import lookup_status

    prefix = "health-probe"
    assert lookup_status(redis_server, prefix) | {"detail": ""} == {
        "status": "unavailable", "reason": "no_live_version", "live_version": None,
        "retry_after": 30, "detail": "",
    }  # fmt: skip
    admin = redis_client(redis_server)
    admin.set(f"{prefix}:live", "0abc12")
    admin.hset(f"{prefix}:ver:0abc12", mapping={"state": "live", "buckets:d": 1})
    try:
        assert lookup_status(redis_server, prefix) == {
            "status": "ok", "reason": None, "live_version": "0abc12"
        }  # fmt: skip
    finally:
        admin.delete(f"{prefix}:live", f"{prefix}:ver:0abc12")
    elsewhere = redis_server.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    assert lookup_status(elsewhere, prefix)["reason"] == "unreachable"
