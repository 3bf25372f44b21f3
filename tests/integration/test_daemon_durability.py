"""cloudctld's promises under stress: restarts, kill -9, concurrent writers, auth, bad config."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cloudctl.cli.client import ApiClient, CliError
from tests.conftest import Daemon, write_config


def test_nodes_survive_a_clean_restart(daemon):
    daemon.cli("node", "add", "--mac", "52:54:00:aa:00:01", "--role", "hnode")
    daemon.cli("node", "drain", "hn1")
    assert daemon.stop() == 0
    daemon.start()
    node = daemon.cli_json("node", "show", "hn1")
    assert (node["mac"], node["state"]) == ("52:54:00:aa:00:01", "drained")
    # allocation carries on after the restart instead of reusing hn1's name or address
    second = daemon.cli_json("node", "add", "--mac", "52:54:00:aa:00:02", "--role", "hnode")
    assert (second["name"], second["ip"]) == ("hn2", "10.20.0.4")


def test_acknowledged_registration_survives_kill_9(daemon):
    client = ApiClient(str(daemon.socket))
    acked = client.request("POST", "/v1/nodes", {"mac": "52:54:00:aa:00:07", "role": "snode"})
    client.close()
    daemon.kill()  # SIGKILL straight after the acknowledgement: no shutdown path runs
    daemon.start()
    assert daemon.cli_json("node", "show", acked["name"])["mac"] == "52:54:00:aa:00:07"


def test_every_acknowledged_write_of_a_burst_survives_kill_9(daemon):
    client = ApiClient(str(daemon.socket))
    acked = []
    for i in range(200):
        acked.append(
            client.request(
                "POST", "/v1/nodes", {"mac": f"52:54:00:bb:00:{i:02x}", "role": "hnode"}
            )["name"]
        )
    client.close()
    daemon.kill()
    daemon.start()
    assert [n["name"] for n in daemon.cli_json("node", "list")] == acked


def test_twenty_concurrent_cli_processes(daemon):
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "cloudctl.cli.main",
                "--config",
                str(daemon.config),
                "node",
                "add",
                "--mac",
                f"52:54:00:cc:00:{i:02x}",
                "--role",
                "hnode",
                "-o",
                "json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(20)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 20, [err for _, err in outputs]
    acked = [json.loads(out) for out, _ in outputs]
    nodes = daemon.cli_json("node", "list")
    assert len(nodes) == 20
    assert len({n["name"] for n in nodes}) == 20
    assert len({n["ip"] for n in nodes}) == 20
    assert {n["mac"] for n in nodes} == {f"52:54:00:cc:00:{i:02x}" for i in range(20)}
    assert sorted(a["name"] for a in acked) == sorted(n["name"] for n in nodes)


def test_concurrent_duplicate_mac_registers_exactly_once(daemon):
    def add(_: int) -> str:
        client = ApiClient(str(daemon.socket))
        try:
            client.request("POST", "/v1/nodes", {"mac": "52:54:00:dd:00:01", "role": "hnode"})
            return "ok"
        except CliError as exc:
            return str(exc)
        finally:
            client.close()

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(add, range(20)))
    assert results.count("ok") == 1
    assert set(results) - {"ok"} == {"MAC 52:54:00:dd:00:01 is already registered as node hn1"}
    assert len(daemon.cli_json("node", "list")) == 1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raw_tcp(port: int, method: str, path: str, headers: dict) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request(method, path, headers=headers)
    response = conn.getresponse()
    status, body = response.status, json.loads(response.read())
    conn.close()
    return status, body


def test_tcp_listener_requires_the_bearer_token(short_tmp):
    port, token = _free_port(), "s3cret-token-for-tests-only"
    d = Daemon(short_tmp, write_config(short_tmp, tcp_port=port, token=token))
    d.start()
    try:
        for headers in (
            {},
            {"Authorization": "Bearer wrong-token-xxxxxxxxxx"},
            {"Authorization": f"Basic {token}"},
        ):
            status, body = _raw_tcp(port, "GET", "/v1/nodes", headers)
            assert (status, body) == (401, {"error": "a valid bearer token is required"})
        status, _ = _raw_tcp(port, "GET", "/openapi.json", {})
        assert status == 401
        # a write without the token must not happen
        client = ApiClient(f"http://127.0.0.1:{port}")
        with pytest.raises(CliError, match="a valid bearer token is required"):
            client.request("POST", "/v1/nodes", {"mac": "52:54:00:aa:00:01", "role": "hnode"})
        authed = ApiClient(f"http://127.0.0.1:{port}", token=token)
        node = authed.request("POST", "/v1/nodes", {"mac": "52:54:00:aa:00:01", "role": "hnode"})
        assert node["name"] == "hn1"
        assert authed.request("GET", "/v1/audit")["entries"][0]["actor"] == "token@127.0.0.1"
        # the CLI takes the token from the config when --api names the TCP listener
        listing = d.cli("--api", f"http://127.0.0.1:{port}", "node", "list", "-o", "json")
        assert [n["name"] for n in json.loads(listing.stdout)] == ["hn1"]
    finally:
        d.stop()


def test_second_daemon_on_the_same_state_is_refused(daemon):
    result = subprocess.run(
        [sys.executable, "-m", "cloudctl.daemon", "--config", str(daemon.config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        f"cloudctld: the state at {daemon.directory / 'state.db'} is in use by another cloudctld"
    )


def test_bad_config_is_one_line_and_exit_2(short_tmp):
    config = write_config(short_tmp)
    config.write_text(config.read_text().replace("subnet: 10.20.0.0/24", "subnet: 10.20.0.1/24"))
    result = subprocess.run(
        [sys.executable, "-m", "cloudctl.daemon", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"cloudctld: {config}: network.subnet: must be an IPv4 subnet")


def test_stale_socket_from_a_killed_daemon_is_replaced(daemon):
    daemon.kill()
    assert daemon.socket.exists()
    daemon.start()
    assert daemon.cli_json("node", "list") == []


def test_job_watch_and_cancel_through_the_cli(daemon):
    done = daemon.cli(
        "job", "test", "--steps", "3", "--interval", "0", "--watch", "--reason", "smoke"
    )
    lines = done.stdout.splitlines()
    assert lines[0] == "job 1 queued"
    assert [line.split("  ", 1)[1] for line in lines[1:4]] == ["step 1/3", "step 2/3", "step 3/3"]
    assert lines[-1] == "job 1 succeeded"

    failed = daemon.cli(
        "job", "test", "--steps", "3", "--interval", "0", "--fail-at", "2", "--watch", check=False
    )
    assert failed.returncode == 1
    assert failed.stdout.splitlines()[-1] == "job 2 failed: failed at step 2 as asked (fail_at=2)"

    daemon.cli("job", "test", "--steps", "1000", "--interval", "0.05")
    time.sleep(0.3)
    cancelled = daemon.cli("job", "cancel", "3", "--reason", "enough")
    assert cancelled.stdout == "job 3 cancelled\n"
    job = daemon.cli_json("job", "show", "3")
    assert job["state"] == "cancelled"
    assert job["error"] == "cancelled by root: enough"
    assert 1 <= len(job["progress"]) < 1000
    again = daemon.cli("job", "cancel", "3", check=False)
    assert again.stderr == "cloudctl: error: job 3 is already cancelled\n"
    assert [j["state"] for j in daemon.cli_json("job", "list")] == [
        "cancelled",
        "failed",
        "succeeded",
    ]


def test_job_running_at_kill_9_is_failed_after_restart(daemon):
    daemon.cli("job", "test", "--steps", "1000", "--interval", "0.05")
    time.sleep(0.3)
    daemon.kill()
    daemon.start()
    job = daemon.cli_json("job", "show", "1")
    assert job["state"] == "failed"
    assert job["error"].startswith("cloudctld stopped while this job was unfinished")
    assert job["progress"]  # the progress written before the kill is kept
