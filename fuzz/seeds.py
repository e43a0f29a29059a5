#!/usr/bin/env python3
"""Writes the committed seed corpus (fuzz/seeds/<target>/): protobuf messages as the
peers send them (field numbers from node/proto), and the example YAMLs. Re-run after a
.proto change: python3 fuzz/seeds.py. A tiny hand encoder keeps it free of dependencies."""
import base64
import hashlib
import hmac
import os
import shutil
import struct

ROOT = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(ROOT)


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def u(field, n):
    return varint(field << 3) + varint(n)


def d(field, x):
    return varint(field << 3 | 1) + struct.pack("<d", x)


def ld(field, payload):
    if isinstance(payload, str):
        payload = payload.encode()
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def vec3(x, y, z):
    return d(1, x) + d(2, y) + d(3, z)


def ship_command(seq, route=(), max_speed=0.0, thrust=None):
    out = u(1, seq)
    for name, (x, y, z), r in route:
        out += ld(2, ld(1, name) + ld(2, vec3(x, y, z)) + d(3, r))
    if max_speed:
        out += d(3, max_speed)
    if thrust is not None:
        out += ld(4, vec3(*thrust))
    return out


def token(name, exp, key=b"\x5a" * 32):
    """A player token as gateway/auth.rs mints it (the wire target's fixed key)."""
    b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    payload = b64(struct.pack(">Q", exp) + name.encode())
    tag = b64(hmac.new(key, b"v1." + payload.encode(), hashlib.sha256).digest())
    return f"v1.{payload}.{tag}"


ENTITY = (u(1, 5) + u(2, 1) + ld(3, vec3(1.0e6, -2.0e6, 3.0)) + ld(4, vec3(10.0, 0.0, -5.0))
          + ld(5, "lorville") + u(6, 3) + ld(7, b"\x08\x01") + ld(8, "hurston") + u(9, 1))
WRITE = (u(1, 42) + u(2, 3) + u(3, 5) + u(4, 1) + ld(5, vec3(1.0e6, -2.0e6, 3.0))
         + ld(6, vec3(10.0, 0.0, -5.0)) + ld(7, "lorville") + ld(8, b"\x08\x01"))
ROUTE = [("everus-harbor", (12851500.0, 0.0, 0.0), 200.0),
         ("area18", (-27157000.0, 9884000.0, 800.0), 100.0)]

WIRE = {
    # selector byte (fuzz_targets/wire.rs) + message
    "server-hello": b"\x00" + ld(1, ld(1, "hurston") + u(2, 1)),
    "server-heartbeat": b"\x00" + ld(2, b""),
    "server-write": b"\x00" + ld(3, WRITE),
    "server-neighbourhood": b"\x00" + ld(4, ld(1, vec3(1.0e6, 0.0, 0.0)) + d(2, 5000.0)),
    "server-gate-enter": b"\x00" + ld(5, u(1, 43) + u(2, 3) + u(3, 5) + ld(4, "stanton-pyro")),
    "gateway-attach": b"\x01" + ld(1, u(1, 7) + u(2, (1 << 62) | 7) + d(3, 5000.0)
                                   + ld(4, vec3(12851500.0, 0.0, 0.0))),
    "gateway-detach": b"\x01" + ld(2, u(1, 7)),
    "gateway-input": b"\x01" + ld(3, u(1, 7) + u(2, 1) + ld(3, ld(1, ship_command(1, ROUTE)))),
    "gate-arrive": b"\x02" + ld(1, "stanton/0/5@3") + ld(2, "stanton") + ld(3, "stanton-pyro")
    + ld(4, "pyro-stanton") + ld(5, ENTITY),
    "player-hello": b"\x03" + ld(1, ld(1, "dev.alice")),
    "player-route": b"\x03" + ld(2, ship_command(7, ROUTE, 50000.0)),
    "player-thrust": b"\x03" + ld(2, ship_command(8, (), 0.0, (100.0, -50.0, 0.0))),
    "player-join": b"\x04" + ld(1, "alice"),
    "player-join-token": b"\x04" + ld(2, token("alice", 1_800_000_100)),
    "player-hello-token": b"\x03" + ld(1, ld(1, token("bob", 1_800_000_100))),
    "admin-drain": b"\x05" + ld(1, "hurston"),
    "admin-lookup": b"\x05" + u(1, (1 << 62) | 7),
    "store-entity": b"\x06" + ENTITY,
}

PLAYER_INPUT = {
    "route": ld(2, ship_command(7, ROUTE, 50000.0)),
    "thrust": ld(2, ship_command(8, (), 0.0, (100.0, -50.0, 0.0))),
    "route-then-stop": ld(2, ship_command(9, ROUTE[:1], 1.0e6, (0.0, 0.0, 0.0))),
}


def write(target, name, data):
    d_ = os.path.join(ROOT, "seeds", target)
    os.makedirs(d_, exist_ok=True)
    with open(os.path.join(d_, name), "wb") as f:
        f.write(data)


def main():
    shutil.rmtree(os.path.join(ROOT, "seeds"), ignore_errors=True)
    for k, v in WIRE.items():
        write("wire", k, v)
    for k, v in PLAYER_INPUT.items():
        write("player_input", k, v)
    examples = os.path.join(REPO, "manifests", "examples")
    fixtures = os.path.join(REPO, "node", "tests", "fixtures")
    for folder in (examples, fixtures):
        for f in sorted(os.listdir(folder)):
            if f.endswith(".yaml"):
                with open(os.path.join(folder, f), "rb") as fh:
                    write("yaml", f, fh.read())
    # Two documents in one file, as `starmesh local --system` takes them.
    with open(os.path.join(examples, "stanton.yaml"), "rb") as a, \
            open(os.path.join(examples, "stanton-layout.yaml"), "rb") as b:
        write("yaml", "stanton-both.yaml", a.read() + b"\n---\n" + b.read())
    # The structured target reads raw bytes: a few fixed patterns to start from.
    for i, data in enumerate([bytes(64), bytes(range(256)), b"\xff" * 128, bytes(range(7, 250, 3))]):
        write("validation", f"pattern-{i}", data)


if __name__ == "__main__":
    main()
