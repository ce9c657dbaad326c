"""A small, dependency-free Modbus TCP server over a bank of holding registers.

It implements the subset of Modbus TCP a register-mapped hand needs -- read holding registers
(0x03), read input registers (0x04, served from the same bank), write single register (0x06)
and write multiple registers (0x10) -- with the standard exception responses (illegal function,
illegal data address, illegal data value). It is written against the protocol specification
rather than on top of pymodbus' server classes, so the pymodbus *client* in ``ModbusHand`` is
tested against an independent implementation, and so it behaves the same across pymodbus 3.x.
"""
from __future__ import annotations

import socket
import socketserver
import struct
import threading
from typing import Callable, Iterable

ILLEGAL_FUNCTION = 0x01
ILLEGAL_ADDRESS = 0x02
ILLEGAL_VALUE = 0x03

WriteCallback = Callable[[int, list[int]], None]


def to_int16(value: int) -> int:
    """uint16 register value -> signed int16."""
    return value - 0x10000 if value >= 0x8000 else value


def to_uint16(value: int) -> int:
    """Signed int16 (or uint16) -> uint16 register value."""
    return int(value) & 0xFFFF


class ModbusAddressError(Exception):
    """Access to an address outside every mapped block."""


class RegisterBank:
    """Thread-safe holding registers made of mapped blocks ``{start: count}``."""

    def __init__(self, blocks: dict[int, int]):
        self._lock = threading.RLock()
        self._regs: dict[int, int] = {}
        for start, count in blocks.items():
            for addr in range(start, start + count):
                self._regs[addr] = 0

    @property
    def lock(self) -> threading.RLock:
        """The lock guarding the registers (hold it for multi-step read-modify-write)."""
        return self._lock

    def _check(self, address: int, count: int) -> None:
        missing = [a for a in range(address, address + count) if a not in self._regs]
        if missing:
            raise ModbusAddressError(f"unmapped address {missing[0]}")

    def read(self, address: int, count: int) -> list[int]:
        """Read ``count`` uint16 values starting at ``address``."""
        with self._lock:
            self._check(address, count)
            return [self._regs[a] for a in range(address, address + count)]

    def write(self, address: int, values: Iterable[int]) -> None:
        """Write uint16 values (signed ints are stored in two's complement)."""
        values = [to_uint16(v) for v in values]
        with self._lock:
            self._check(address, len(values))
            for offset, value in enumerate(values):
                self._regs[address + offset] = value

    def read_signed(self, address: int, count: int) -> list[int]:
        """Read ``count`` values as int16."""
        return [to_int16(v) for v in self.read(address, count)]


class _Handler(socketserver.BaseRequestHandler):
    server: "_TcpServer"

    def _recv_exact(self, size: int) -> bytes | None:
        chunks = bytearray()
        while len(chunks) < size:
            try:
                chunk = self.request.recv(size - len(chunks))
            except OSError:
                return None
            if not chunk:
                return None
            chunks.extend(chunk)
        return bytes(chunks)

    def handle(self) -> None:
        owner = self.server.owner
        owner._register_connection(self.request)
        try:
            while True:
                header = self._recv_exact(7)
                if header is None:
                    return
                tid, pid, length, unit = struct.unpack(">HHHB", header)
                if pid != 0 or length < 2 or length > 254:
                    return  # not Modbus TCP: drop the connection
                pdu = self._recv_exact(length - 1)
                if pdu is None:
                    return
                if owner.unit_id is not None and unit not in (owner.unit_id, 0):
                    continue  # addressed to another unit: no answer (like a gateway timeout)
                reply = owner.process_pdu(pdu)
                try:
                    self.request.sendall(struct.pack(">HHHB", tid, 0, len(reply) + 1, unit) + reply)
                except OSError:
                    return
        finally:
            owner._unregister_connection(self.request)


class _TcpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    owner: "ModbusTcpRegisterServer"


class ModbusTcpRegisterServer:
    """Serve a :class:`RegisterBank` over Modbus TCP in a background thread.

    ``port=0`` picks a free port (read it back from :attr:`port` after :meth:`start`).
    ``on_write(address, values)`` is called after every successful write, outside the bank lock.
    """

    def __init__(
        self,
        bank: RegisterBank,
        host: str = "127.0.0.1",
        port: int = 502,
        unit_id: int | None = None,
        on_write: WriteCallback | None = None,
    ):
        self.bank = bank
        self.host = host
        self._requested_port = port
        self.unit_id = unit_id
        self.on_write = on_write
        self._server: _TcpServer | None = None
        self._thread: threading.Thread | None = None
        self._conn_lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self.requests_served = 0

    @property
    def port(self) -> int:
        """The bound port (the requested one until started)."""
        return self._server.server_address[1] if self._server else self._requested_port

    @property
    def running(self) -> bool:
        """True while the server accepts connections."""
        return self._server is not None

    def start(self) -> "ModbusTcpRegisterServer":
        """Bind and serve in a daemon thread; returns ``self``."""
        if self._server is not None:
            return self
        server = _TcpServer((self.host, self._requested_port), _Handler)
        server.owner = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="modbus-tcp-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting, close every open client connection, release the port."""
        server, self._server = self._server, None
        if server is None:
            return
        self._requested_port = server.server_address[1]
        server.shutdown()
        server.server_close()
        with self._conn_lock:
            conns = list(self._connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _register_connection(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections.add(conn)

    def _unregister_connection(self, conn: socket.socket) -> None:
        with self._conn_lock:
            self._connections.discard(conn)

    # -- protocol -------------------------------------------------------------------------
    def process_pdu(self, pdu: bytes) -> bytes:
        """Execute one request PDU and return the response PDU."""
        self.requests_served += 1
        fc = pdu[0]
        try:
            if fc in (0x03, 0x04):
                if len(pdu) != 5:
                    return bytes([fc | 0x80, ILLEGAL_VALUE])
                address, count = struct.unpack(">HH", pdu[1:5])
                if not 1 <= count <= 125:
                    return bytes([fc | 0x80, ILLEGAL_VALUE])
                values = self.bank.read(address, count)
                return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *values)
            if fc == 0x06:
                if len(pdu) != 5:
                    return bytes([fc | 0x80, ILLEGAL_VALUE])
                address, value = struct.unpack(">HH", pdu[1:5])
                self.bank.write(address, [value])
                self._notify(address, [value])
                return pdu
            if fc == 0x10:
                if len(pdu) < 6:
                    return bytes([fc | 0x80, ILLEGAL_VALUE])
                address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
                if not 1 <= count <= 123 or nbytes != 2 * count or len(pdu) != 6 + nbytes:
                    return bytes([fc | 0x80, ILLEGAL_VALUE])
                values = list(struct.unpack(f">{count}H", pdu[6:6 + nbytes]))
                self.bank.write(address, values)
                self._notify(address, values)
                return pdu[:5]
        except ModbusAddressError:
            return bytes([fc | 0x80, ILLEGAL_ADDRESS])
        return bytes([(fc | 0x80) & 0xFF, ILLEGAL_FUNCTION])

    def _notify(self, address: int, values: list[int]) -> None:
        if self.on_write is not None:
            self.on_write(address, values)
