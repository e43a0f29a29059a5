#!/usr/bin/env python3
"""A starmesh game server in Python: the ServerLink protocol (node/proto/PROTOCOL.md)
spoken with grpcio, from stubs generated from the project's .proto files:

    python3 -m grpc_tools.protoc -I node/proto --python_out=STUBS --grpc_python_out=STUBS \
        starmesh/v1/entity.proto starmesh/v1/server_link.proto starmesh/v1/player_link.proto
    python3 starmesh_server.py --stubs STUBS --replicant 127.0.0.1:7000 --name s-earth --ships 5

It does what the Rust runner does, in a few hundred lines: Hello with the protocol
version, heartbeats within the lease, grants and revokes, handoffs in and out, every
write stamped with its territory's epoch, rejected entities dropped. Its game is the
example game's rules (routes of waypoints, docking, player commands and spawns), with the
state in the entity's components (`starmesh.v1.ShipState`), so a ship continues
unchanged on a Rust server after a handoff and back.

It creates `--ships` ships (ids `--id-base`..) in the first territory it is granted,
with a route from `--route`, and prints one JSON line per event on stdout (welcome,
grant, revoke, created, handoff_in, handoff_out, rejected, error) for tests and tools.
"""

import argparse
import json
import math
import queue
import sys
import threading
import time

PROTOCOL_VERSION = 1
DOCK_TICKS = 30  # as the example game: ticks docked before moving on
APPROACH_SECONDS = 0.25  # the approach covers the rest in about this long
SHIP_KIND = 1


def emit(event, **fields):
    print(json.dumps({"event": event, **fields}), flush=True)


class Server:
    def __init__(self, args, pb, sl, sl_grpc, pl):
        self.args, self.pb, self.sl, self.sl_grpc, self.pl = args, pb, sl, sl_grpc, pl
        self.territories = {}  # territory -> epoch
        self.held = {}  # id -> [EntityState, territory]
        self.spawned = set()  # ids created by this process (once per process)
        self.seq = 0
        self.lease = None
        self.out = queue.Queue()
        self.inbox = queue.Queue()

    # --- the wire -----------------------------------------------------------------

    def send(self, **msg):
        self.out.put(self.sl.ServerMessage(**msg))

    def requests(self):
        while True:
            m = self.out.get()
            if m is None:
                return
            yield m

    def read(self, responses):
        try:
            for m in responses:
                self.inbox.put(m)
            self.inbox.put(("closed", None))
        except Exception as e:  # grpc.RpcError: the status that ended the stream
            self.inbox.put(("error", e))

    def write(self, state, epoch):
        self.seq += 1
        self.send(write=self.sl.EntityWrite(
            seq=self.seq, epoch=epoch, id=state.id, kind=state.kind,
            position=state.position, velocity=state.velocity,
            location=state.location, components=state.components))

    # --- authority (the replicant decides; we follow, erring towards not simulating)

    def handle(self, m):
        kind = m.WhichOneof("msg")
        if kind == "welcome":
            self.lease = m.welcome.lease_ms / 1000.0
            emit("welcome", lease_ms=m.welcome.lease_ms,
                 protocol_version=m.welcome.protocol_version)
        elif kind == "grant":
            g = m.grant
            self.territories[g.territory] = max(g.epoch, self.territories.get(g.territory, 0))
            emit("grant", territory=g.territory, epoch=g.epoch)
        elif kind == "revoke":
            r = m.revoke
            if self.territories.get(r.territory, r.epoch + 1) <= r.epoch:
                del self.territories[r.territory]
                for i in [i for i, h in self.held.items() if h[1] == r.territory]:
                    del self.held[i]
            emit("revoke", territory=r.territory, epoch=r.epoch)
        elif kind == "handoff_in":
            h = m.handoff_in
            e = h.entity
            held = self.held.get(e.id)
            if (not h.from_territory and held and held[1] == h.to_territory
                    and self.territories.get(h.to_territory) == h.epoch):
                return  # confirms our own creation: our state is newer
            if self.territories.get(h.to_territory) != h.epoch:
                return  # raced a revoke: not ours
            state = self.pb.EntityState()
            state.CopyFrom(e)
            self.held[e.id] = [state, h.to_territory]
            ship = self.pl.ShipState.FromString(e.components)
            emit("handoff_in", id=e.id, **{"from": h.from_territory}, to=h.to_territory,
                 epoch=h.epoch, version=e.version, arrivals=ship.arrivals)
            self.dirty.add(e.id)  # the first write under the new epoch confirms it
        elif kind == "handoff_out":
            h = m.handoff_out
            if self.held.pop(h.entity.id, None) is not None:
                emit("handoff_out", id=h.entity.id, to=h.to_territory)
        elif kind == "player_input":
            self.player_input(m.player_input)
        elif kind == "rejected":
            for f in m.rejected.first:
                fenced = f.reason in (self.sl.REJECT_REASON_STALE_EPOCH,
                                      self.sl.REJECT_REASON_NOT_OWNER)
                held = self.held.get(f.id)
                mine = held and self.territories.get(held[1])
                if (fenced and held and mine != f.current_epoch) or \
                        f.reason == self.sl.REJECT_REASON_GATE_IN_TRANSIT:
                    self.held.pop(f.id, None)
                emit("rejected", id=f.id, seq=f.seq, reason=f.reason)

    # --- the game -------------------------------------------------------------------

    def player_input(self, pi):
        """The example game's inputs (GameInput): a command for a held ship, or a spawn."""
        try:
            g = self.pl.GameInput.FromString(pi.input)
        except Exception:
            return  # not ours to understand: ignored, as the Rust game does
        held = self.held.get(pi.entity_id)
        which = g.WhichOneof("cmd")
        if held and which == "command":
            e, c = held[0], g.command
            s = self.pl.ShipState.FromString(e.components)
            if c.seq <= s.last_input_seq and s.player_id == pi.player_id:
                return  # replayed or reordered: already applied
            s.last_input_seq, s.player_id = c.seq, pi.player_id
            if c.route:
                del s.route[:]
                s.route.extend(w for w in c.route if all(map(math.isfinite, (
                    w.position.x, w.position.y, w.position.z, w.radius))))
                s.next, s.docked_ticks = 0, 0
            if math.isfinite(c.max_speed) and c.max_speed > 0:
                s.max_speed = min(c.max_speed, 1e6)
            if c.HasField("thrust"):
                lim = s.max_speed if s.max_speed > 0 else 100_000.0
                v = [max(-lim, min(lim, x)) for x in (c.thrust.x, c.thrust.y, c.thrust.z)]
                del s.route[:]
                s.next, s.docked_ticks = 0, 0
                s.manual_velocity.x, s.manual_velocity.y, s.manual_velocity.z = v
                e.velocity.x, e.velocity.y, e.velocity.z = v
            elif s.route:
                s.ClearField("manual_velocity")
            e.components = s.SerializeToString()
            self.dirty.add(e.id)
        elif not held and which == "spawn":
            sp = g.spawn
            epoch = self.territories.get(sp.territory)
            if epoch is None or pi.entity_id == 0:
                return
            ship = self.pl.ShipState(player_id=pi.player_id)
            state = self.pb.EntityState(
                id=pi.entity_id, kind=SHIP_KIND, position=sp.position, velocity=self.pb.Vec3(),
                location=sp.location, components=ship.SerializeToString(),
                territory=sp.territory)
            self.held[state.id] = [state, sp.territory]
            self.write(state, epoch)  # written at once, where it was created
            emit("spawned", id=state.id, territory=sp.territory)

    def spawn(self):
        if len(self.spawned) >= self.args.ships or not self.territories:
            return
        territory = self.args.spawn_territory
        epoch = self.territories.get(territory)
        if epoch is None:
            return
        route = []
        for i, wp in enumerate(self.args.route.split(";")):
            x, y, z, r = (float(c) for c in wp.split(","))
            route.append(self.pl.Waypoint(name=f"wp{i}", position=self.pb.Vec3(x=x, y=y, z=z),
                                          radius=r))
        for k in range(self.args.ships):
            i = self.args.id_base + k
            if i in self.spawned or i in self.held:
                continue
            ship = self.pl.ShipState(route=route, max_speed=self.args.speed)
            x, y, z = (float(c) for c in self.args.spawn_at.split(","))
            state = self.pb.EntityState(
                id=i, kind=SHIP_KIND, position=self.pb.Vec3(x=x + 5.0 * k, y=y, z=z),
                velocity=self.pb.Vec3(), components=ship.SerializeToString(),
                territory=territory)
            self.held[i] = [state, territory]
            self.spawned.add(i)
            self.write(state, epoch)  # written at once, where it was created
            emit("created", id=i, territory=territory, epoch=epoch)

    def step(self, e, dt):
        """The example game's rule for one ship; True if it changed (and is written)."""
        if e.kind != SHIP_KIND:
            return False
        s = self.pl.ShipState.FromString(e.components)
        if not s.route:
            # Manual flight (a player's thrust), or at rest.
            v = s.manual_velocity
            if not s.HasField("manual_velocity") or (v.x, v.y, v.z) == (0, 0, 0):
                return False
            e.position.x += v.x * dt
            e.position.y += v.y * dt
            e.position.z += v.z * dt
            e.velocity.x, e.velocity.y, e.velocity.z = v.x, v.y, v.z
            e.location = ""
            return True
        if s.docked_ticks > 0:
            s.docked_ticks -= 1
            if s.docked_ticks > 0:
                e.components = s.SerializeToString()
                return False  # waiting is not worth a write per tick
            s.next = (s.next + 1) % len(s.route)
            e.components = s.SerializeToString()
            return True
        if s.next >= len(s.route):
            s.next = 0
        wp = s.route[s.next]
        p, t = e.position, wp.position
        d = math.dist((p.x, p.y, p.z), (t.x, t.y, t.z))
        arrived = d <= wp.radius
        if not arrived:
            speed = min(s.max_speed if s.max_speed > 0 else 100_000.0, d / APPROACH_SECONDS)
            k = min(speed * dt, d) / d
            vx, vy, vz = ((t.x - p.x) / d * speed, (t.y - p.y) / d * speed,
                          (t.z - p.z) / d * speed)
            p.x, p.y, p.z = p.x + (t.x - p.x) * k, p.y + (t.y - p.y) * k, p.z + (t.z - p.z) * k
            arrived = math.dist((p.x, p.y, p.z), (t.x, t.y, t.z)) <= wp.radius
            e.velocity.x, e.velocity.y, e.velocity.z = (0, 0, 0) if arrived else (vx, vy, vz)
        if arrived:
            e.velocity.x = e.velocity.y = e.velocity.z = 0.0
            e.location = wp.name
            s.docked_ticks = DOCK_TICKS
            s.arrivals += 1
            e.components = s.SerializeToString()
        elif e.location:
            e.location = ""
        return True

    def tick(self, dt):
        self.spawn()
        changed = self.dirty
        self.dirty = set()
        for i in sorted(self.held):
            if self.step(self.held[i][0], dt):
                changed.add(i)
        for i in sorted(changed):
            h = self.held.get(i)
            epoch = h and self.territories.get(h[1])
            if epoch:
                self.write(h[0], epoch)

    # --- the session ----------------------------------------------------------------

    def run(self, grpc):
        self.dirty = set()
        channel = grpc.insecure_channel(self.args.replicant)
        stub = self.sl_grpc.ServerLinkStub(channel)
        self.send(hello=self.sl.Hello(server_name=self.args.name,
                                      protocol_version=self.args.protocol_version))
        responses = stub.Session(self.requests())
        threading.Thread(target=self.read, args=(responses,), daemon=True).start()
        period = 1.0 / self.args.tick_hz
        next_tick = time.monotonic()
        last_beat = 0.0
        deadline = time.monotonic() + self.args.duration if self.args.duration else None
        while deadline is None or time.monotonic() < deadline:
            # Authority first: everything the replicant said before this tick applies.
            while True:
                try:
                    m = self.inbox.get(timeout=max(0.0, next_tick - time.monotonic()))
                except queue.Empty:
                    break
                if isinstance(m, tuple):
                    status = m[1]
                    code = status.code().name if status is not None else "OK"
                    details = status.details() if status is not None else "stream closed"
                    emit("error", code=code, message=details)
                    self.out.put(None)
                    return 1
                self.handle(m)
            now = time.monotonic()
            next_tick = max(next_tick + period, now)  # skip, never burst, after an overrun
            if self.lease is None:
                continue
            if now - last_beat >= self.lease / 3:
                self.send(heartbeat=self.sl.Heartbeat())
                last_beat = now
            self.tick(period)
        self.out.put(None)
        return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stubs", required=True, help="folder with the generated starmesh/v1 stubs")
    ap.add_argument("--replicant", required=True, help="host:port of the replicant's gRPC")
    ap.add_argument("--name", required=True, help="server name (the ServerLayout's)")
    ap.add_argument("--tick-hz", type=float, default=30.0)
    ap.add_argument("--protocol-version", type=int, default=PROTOCOL_VERSION)
    ap.add_argument("--ships", type=int, default=0, help="ships to create")
    ap.add_argument("--id-base", type=int, default=1_000_000)
    ap.add_argument("--spawn-territory", default="earth")
    ap.add_argument("--spawn-at", default="1000,0,0", help="x,y,z km of the first ship")
    ap.add_argument("--route", default="1000,600,0,10;1000,0,0,10",
                    help="waypoints x,y,z,radius separated by ';'")
    ap.add_argument("--speed", type=float, default=300.0, help="km/s")
    ap.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = forever")
    args = ap.parse_args()
    sys.path.insert(0, args.stubs)
    import grpc
    from starmesh.v1 import entity_pb2, player_link_pb2, server_link_pb2, server_link_pb2_grpc
    s = Server(args, entity_pb2, server_link_pb2, server_link_pb2_grpc, player_link_pb2)
    return s.run(grpc)


if __name__ == "__main__":
    sys.exit(main())
