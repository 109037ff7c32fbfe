"""Rate limits and quotas per key, end to end: 429 with Retry-After and RateLimit-* headers, a
refused call recovers once the bucket refills, and a used quota stays used after a restart.
"""

from __future__ import annotations

import time

import httpx

from conftest import TidalServer

ECHO = """
import tidal

@tidal.function(name="{name}")
def echo(payload):
    return payload
"""


def deploy_echo(server: TidalServer, write_module, name: str) -> None:  # type: ignore[no-untyped-def]
    result = server.deploy(write_module(ECHO.format(name=name), f"{name}.py"))
    assert result.returncode == 0, result.stderr


def create_key(server: TidalServer, *flags: str) -> tuple[str, str]:
    """(key id, secret) of a key made with `tidal keys create FLAGS`."""
    result = server.cli("keys", "create", *flags)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip()
    return key.split("_")[1], key


def call(server: TidalServer, function: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{server.url}/fn/{function}", json={"n": 1}, headers={"authorization": f"Bearer {key}"}
    )


def test_past_the_rate_a_key_gets_429_with_headers_and_recovers(
    tidal_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    deploy_echo(tidal_server, write_module, "limited_echo")
    # 5 a minute, burst 5: the bucket gets a token back only every 12 s, so the 6th call is refused.
    _, slow = create_key(tidal_server, "--scope", "invoke:limited_echo", "--rate", "5/m", "--burst", "5")
    answers = [call(tidal_server, "limited_echo", slow) for _ in range(6)]
    assert [answer.status_code for answer in answers] == [200] * 5 + [429]
    # Admitted answers carry the RateLimit-* headers too: the bucket empties one token a call.
    assert [answer.headers["ratelimit-remaining"] for answer in answers[:5]] == ["4", "3", "2", "1", "0"]
    assert answers[0].headers["ratelimit-limit"] == "5"
    refused = answers[-1]
    assert refused.json()["error"]["type"] == "RateLimited"
    assert 1 <= int(refused.headers["retry-after"]) <= 12
    assert refused.headers["ratelimit-limit"] == "5"
    assert refused.headers["ratelimit-remaining"] == "0"
    assert int(refused.headers["ratelimit-reset"]) >= 1
    # 5 a second, burst 5: refused once the burst is spent, then served again after Retry-After.
    key_id, fast = create_key(tidal_server, "--scope", "invoke:*", "--rate", "5/s", "--burst", "5")
    statuses = []
    while 429 not in statuses and len(statuses) < 200:
        answer = call(tidal_server, "limited_echo", fast)
        statuses.append(answer.status_code)
    assert statuses[-1] == 429 and statuses.count(200) >= 5
    # Waiting as told is enough, however slow the calls before were (a token comes back each 0.2 s).
    time.sleep(int(answer.headers["retry-after"]))
    assert call(tidal_server, "limited_echo", fast).status_code == 200
    listed = tidal_server.cli("keys", "ls")
    assert "5/s burst 5" in listed.stdout and key_id in listed.stdout


def test_a_quota_refuses_the_fourth_call_even_after_a_restart(
    fresh_server: TidalServer, write_module
) -> None:  # type: ignore[no-untyped-def]
    server = fresh_server.start()
    deploy_echo(server, write_module, "quota_echo")
    key_id, key = create_key(
        server, "--scope", "invoke:quota_echo", "--quota", "3/day", "--quota", "100gb-s/month"
    )
    assert [call(server, "quota_echo", key).status_code for _ in range(3)] == [200, 200, 200]
    fourth = call(server, "quota_echo", key)
    assert fourth.status_code == 429
    assert fourth.json()["error"]["type"] == "QuotaExceeded"
    assert "3/day" in fourth.json()["error"]["message"]
    assert fourth.headers["ratelimit-limit"] == "3"
    assert 0 < int(fourth.headers["retry-after"]) <= 86400
    server.stop()
    server.start()
    after_restart = call(server, "quota_echo", key)
    assert after_restart.status_code == 429, after_restart.text
    assert after_restart.json()["error"]["type"] == "QuotaExceeded"
    # Raising the quota lets the key through again: the refused calls were not counted.
    changed = server.cli("keys", "limits", key_id, "--quota", "4/day")
    assert changed.returncode == 0, changed.stderr
    assert "4/day" in changed.stdout
    assert call(server, "quota_echo", key).status_code == 200
    assert call(server, "quota_echo", key).status_code == 429
    keys = server.client.get("/v1/keys").json()["keys"]
    assert next(k for k in keys if k["id"] == key_id)["limits"] == {
        "rate": None,
        "burst": None,
        "quotas": ["4/day"],
    }


def test_bad_limits_answer_400_and_a_clear_cli_message(tidal_server: TidalServer) -> None:
    client = tidal_server.client
    answer = client.post("/v1/keys", json={"scopes": ["invoke:*"], "rate": "fast"})
    assert answer.status_code == 400
    assert "invalid rate 'fast'" in answer.json()["error"]["message"]
    answer = client.post("/v1/keys", json={"scopes": ["invoke:*"], "quotas": ["5/fortnight"]})
    assert answer.status_code == 400
    missing = client.patch("/v1/keys/nosuchkey", json={"rate": "5/s"})
    assert missing.status_code == 404
    result = tidal_server.cli("keys", "create", "--scope", "invoke:*", "--burst", "3")
    assert result.returncode != 0
    assert "--burst needs --rate" in result.stderr
    assert "Traceback" not in result.stderr
