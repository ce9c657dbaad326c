"""Modbus TCP emulator of a register-mapped 6-DoF hand (Inspire RH56 map by default).

Run it for bring-up without hardware::

    python -m inference_utils.hand_emulator --host 127.0.0.1 --port 5020 [--speed-scale 1.0]

or from tests::

    emu = HandEmulator(port=0).start()      # port 0 -> a free port, read emu.port
    ...
    emu.stop()

Model: every tick the actual angle (ANGLE_ACT) of each finger moves toward its target
(ANGLE_SET) at ``SPEED_SET * units_per_speed * speed_scale`` units/s. FORCE_ACT grows as a
finger closes (never above FORCE_SET); STATUS reports 0 = opening, 1 = closing, 2 = reached;
TEMP reads 30 degrees C. A finger with a non-zero ERROR register does not move; writing 1 to
the clear-error register zeroes the ERROR block. Optional per-finger obstacles (``set_obstacle``)
stop a closing finger at a given angle and drive its force to FORCE_SET, like grasping an object.

Logging (INFO, logger ``inference_utils.hand_emulator``): client connections and disconnections,
every clear-error command, and the register writes per block (``angle_set``, ``speed_set`` ...),
rate-limited since the runtime streams the targets at the control rate (the first write, then one
line per 2 s with the count and the latest values).
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Mapping

import numpy as np

from inference_utils.devices.modbus_server import ModbusTcpRegisterServer, RegisterBank
from inference_utils.devices.register_map import ANGLE_OPEN, VALUE_MAX, HandRegisterMap
from inference_utils.emulator_log import RateLimitedLog, configure_cli_logging
from inference_utils.stop_signals import install_stop_handlers

STATUS_OPENING, STATUS_CLOSING, STATUS_REACHED, STATUS_FORCE_REACHED = 0, 1, 2, 3
ROOM_TEMPERATURE_C = 30


LOG = logging.getLogger(__name__)


class HandEmulator:
    """A hand's register bank served over Modbus TCP, with a simple motion model."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 5020,
        register_map: HandRegisterMap | Mapping[str, Any] | None = None,
        speed_scale: float = 1.0,
        units_per_speed: float = 1.5,
        update_hz: float = 200.0,
        unit_id: int | None = None,
    ):
        self.map = HandRegisterMap.from_config(register_map)
        if speed_scale <= 0 or update_hz <= 0:
            raise ValueError("speed_scale and update_hz must be positive")
        self.speed_scale = float(speed_scale)
        self.units_per_speed = float(units_per_speed)
        self.update_hz = float(update_hz)
        blocks = {start: self.map.block_size for start in self.map.all_blocks().values()}
        blocks[self.map.clear_error] = 1
        self.bank = RegisterBank(blocks)
        self._actual = np.full(6, float(ANGLE_OPEN))
        self._obstacle = np.full(6, -1.0)  # angle at which a closing finger meets an object
        self._init_registers()
        self.server = ModbusTcpRegisterServer(self.bank, host=host, port=port, unit_id=unit_id,
                                              on_write=self._on_write)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.clear_error_count = 0
        self._write_log = RateLimitedLog(LOG, interval_s=2.0)  # targets are streamed: rate-limited
        self._block_names = {start: name for name, start in self.map.all_blocks().items()}
        register, unregister = self.server._register_connection, self.server._unregister_connection

        peers: dict[int, str] = {}

        def on_connect(conn: Any) -> None:
            register(conn)
            peers[id(conn)] = _peer(conn)
            LOG.info("hand emulator: client %s connected", peers[id(conn)])

        def on_disconnect(conn: Any) -> None:
            unregister(conn)
            LOG.info("hand emulator: client %s disconnected", peers.pop(id(conn), "?"))

        self.server._register_connection, self.server._unregister_connection = on_connect, on_disconnect

    # -- life cycle -------------------------------------------------------------------------
    @property
    def host(self) -> str:
        """Bound host."""
        return self.server.host

    @property
    def port(self) -> int:
        """Bound port (useful with ``port=0``)."""
        return self.server.port

    @property
    def running(self) -> bool:
        """True while the motion model runs."""
        return self._thread is not None

    def start(self, serve_tcp: bool = True) -> "HandEmulator":
        """Start the motion model (and, unless ``serve_tcp=False``, the Modbus TCP server).

        Without TCP the registers are still reachable in-process through
        ``self.server.process_pdu`` (e.g. behind another transport such as RTU).
        """
        if self.running:
            return self
        if serve_tcp:
            self.server.start()
            LOG.info("hand emulator: Modbus TCP listening on %s:%d", self.host, self.port)
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="hand-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the simulation and the server (open client connections are dropped)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self.server.stop()

    def __enter__(self) -> "HandEmulator":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- test helpers -------------------------------------------------------------------------
    def read_block(self, name: str) -> np.ndarray:
        """Current int16 values of a 6-register block, e.g. ``read_block('angle_set')``."""
        return np.array(self.bank.read_signed(getattr(self.map, name), self.map.block_size))

    def inject_error(self, dof: int, code: int = 1) -> None:
        """Set the ERROR register of finger ``dof`` (0..5); the finger stops moving."""
        self.bank.write(self.map.error + dof, [code])

    def set_obstacle(self, angles: Any) -> None:
        """Per-finger angle (0..1000) where a closing finger is blocked; -1 = no obstacle."""
        with self.bank.lock:
            self._obstacle = np.asarray(angles, dtype=float).reshape(6).copy()

    # -- model ------------------------------------------------------------------------------------
    def _init_registers(self) -> None:
        m = self.map
        self.bank.write(m.angle_set, [ANGLE_OPEN] * 6)
        self.bank.write(m.angle_act, [ANGLE_OPEN] * 6)
        self.bank.write(m.speed_set, [VALUE_MAX] * 6)
        self.bank.write(m.force_set, [500] * 6)
        self.bank.write(m.status, [STATUS_REACHED] * 6)
        self.bank.write(m.temp, [ROOM_TEMPERATURE_C] * 6)

    def _block_name(self, address: int) -> str:
        for start, name in self._block_names.items():
            if start <= address < start + self.map.block_size:
                return name if address == start else f"{name}[{address - start}]"
        return f"register {address}"

    def _on_write(self, address: int, values: list[int]) -> None:
        if address == self.map.clear_error:
            LOG.info("hand emulator: clear-error command (%s)", values)
        else:
            self._write_log.event(f"hand emulator: write {self._block_name(address)}", "%s", list(values))
        if address == self.map.clear_error and values and values[0] != 0:
            with self.bank.lock:
                self.bank.write(self.map.error, [0] * 6)
                self.bank.write(self.map.clear_error, [0])
                self.clear_error_count += 1

    def step(self, dt: float) -> None:
        """Advance the motion model by ``dt`` seconds (called by the background thread)."""
        m, n = self.map, self.map.block_size
        with self.bank.lock:
            target = np.clip(np.array(self.bank.read_signed(m.angle_set, n), dtype=float), 0, VALUE_MAX)
            speed = np.clip(np.array(self.bank.read_signed(m.speed_set, n), dtype=float), 0, VALUE_MAX)
            force_set = np.clip(np.array(self.bank.read_signed(m.force_set, n), dtype=float), 0, VALUE_MAX)
            errors = np.array(self.bank.read_signed(m.error, n))
            rate = speed * self.units_per_speed * self.speed_scale
            delta = np.clip(target - self._actual, -rate * dt, rate * dt)
            delta[errors != 0] = 0.0
            new = self._actual + delta
            blocked = (self._obstacle >= 0) & (new < self._obstacle) & (delta < 0)
            new[blocked] = np.where(self._actual[blocked] >= self._obstacle[blocked],
                                    self._obstacle[blocked], self._actual[blocked])
            self._actual = new
            at_obstacle = (self._obstacle >= 0) & (np.abs(new - self._obstacle) < 0.5) & (target < new)
            closure = (ANGLE_OPEN - new) / ANGLE_OPEN
            force = np.minimum(force_set, np.round(0.6 * force_set * closure + 5.0 * (closure > 0.001)))
            force[at_obstacle] = force_set[at_obstacle]
            status = np.where(np.abs(target - new) < 0.5, STATUS_REACHED,
                              np.where(target > new, STATUS_OPENING, STATUS_CLOSING))
            status[at_obstacle] = STATUS_FORCE_REACHED
            self.bank.write(m.angle_act, np.round(new).astype(int).tolist())
            self.bank.write(m.force_act, force.astype(int).tolist())
            self.bank.write(m.status, status.astype(int).tolist())

    def _run(self) -> None:
        period = 1.0 / self.update_hz
        last = time.monotonic()
        while not self._stop.wait(period):
            now = time.monotonic()
            self.step(now - last)
            last = now


def _peer(conn: Any) -> str:
    try:
        host, port = conn.getpeername()[:2]
        return f"{host}:{port}"
    except (OSError, AttributeError, TypeError, ValueError):
        return "?"


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serve until Ctrl-C."""
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags; old underscore spellings accepted
    parser = cli_common.ArgumentParser(description="Modbus TCP emulator of a 6-DoF hand (RH56 map)")
    parser.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=5020, help="TCP port (default 5020)")
    parser.add_argument("--speed-scale", type=float, default=1.0, help="multiply finger speeds")
    parser.add_argument("--unit-id", type=int, default=None, help="answer only this unit id")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO (default: connections and commands), WARNING")
    args = parser.parse_args(argv)
    configure_cli_logging(args.log_level)
    emu = HandEmulator(args.host, args.port, speed_scale=args.speed_scale, unit_id=args.unit_id).start()
    install_stop_handlers()  # Ctrl-C, kill -INT or kill -TERM stop it, however it was launched
    try:  # entered before announcing the port: a Ctrl-C right after the announcement still stops cleanly
        print(f"hand emulator serving Modbus TCP on {emu.host}:{emu.port} (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()


if __name__ == "__main__":
    main()
