"""Send seeded, mutated DHCP packets at a running server, paced by the server's own counters.

Run inside the client's namespace: `python dhcp_fuzz_sender.py TARGET_IP API_SOCKET COUNT`.
Pacing keeps the kernel from dropping datagrams, so every packet reaches cloudctld's decoder.
"""

from __future__ import annotations

import json
import random
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cloudctl.cli.client import ApiClient
from tests.unit.pxe.test_dhcp_fuzz import CORPUS, SEED, layout, mutate

BATCH = 100


def received(client: ApiClient) -> int:
    return client.request("GET", "/v1/stats")["dhcp"].get("received", 0)


def main() -> int:
    target, api_socket, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    client = ApiClient(api_socket)
    rng = random.Random(SEED ^ 0x5E4E)
    layouts = [(packet, *layout(packet)) for packet in CORPUS]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    start = received(client)
    sent = 0
    while sent < count:
        for _ in range(min(BATCH, count - sent)):
            packet, codes, lengths = rng.choice(layouts)
            sock.sendto(mutate(rng, packet, codes, lengths), (target, 67))
            sent += 1
        deadline = time.monotonic() + 2
        while received(client) - start < sent and time.monotonic() < deadline:
            time.sleep(0.001)
    deadline = time.monotonic() + 10
    while received(client) - start < count and time.monotonic() < deadline:
        time.sleep(0.01)
    print(json.dumps({"sent": sent, "received": received(client) - start}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
