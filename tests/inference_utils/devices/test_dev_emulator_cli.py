"""The emulators as command-line servers, and the Modbus server's protocol edge cases."""
from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys

import numpy as np
import pytest

from inference_utils.devices import ModbusHand, RealManArm
from inference_utils.devices.modbus_server import ModbusTcpRegisterServer, RegisterBank


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "module, driver",
    [
        ("inference_utils.hand_emulator",
         lambda port: ModbusHand(host="127.0.0.1", port=port, timeout_s=1.0)),
        ("inference_utils.arm_emulator",
         lambda port: RealManArm(host="127.0.0.1", port=port)),
    ],
)
@pytest.mark.parametrize("inherited_sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["sigint-default", "sigint-ignored"])
def test_emulator_command_line(module, driver, inherited_sigint):
    """Serve, answer the real driver, stop on SIGINT with exit code 0 -- also when the process
    inherits SIGINT as ignored (a background job of a non-interactive shell)."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", module, "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, inherited_sigint))
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line, (line, proc.stderr.read() if proc.poll() is not None else "")
        with driver(port) as device:
            assert device.is_connected
            if isinstance(device, ModbusHand):
                np.testing.assert_allclose(device.read(), 1.0)
            else:
                np.testing.assert_allclose(device.read_joints(), 0.0)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0


def _request(sock: socket.socket, pdu: bytes, tid: int = 7, unit: int = 1) -> bytes:
    sock.sendall(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)
    header = sock.recv(7)
    r_tid, _, length, r_unit = struct.unpack(">HHHB", header)
    assert (r_tid, r_unit) == (tid, unit)
    return sock.recv(length - 1)


def test_modbus_server_protocol_edge_cases():
    writes = []
    bank = RegisterBank({100: 4})
    server = ModbusTcpRegisterServer(bank, port=0, on_write=lambda a, v: writes.append((a, v))).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
            assert _request(sock, struct.pack(">BHHB4H", 0x10, 100, 4, 8, 1, 2, 3, 0xFFFF)) == \
                struct.pack(">BHH", 0x10, 100, 4)
            assert _request(sock, struct.pack(">BHH", 0x03, 100, 4)) == struct.pack(">BB4H", 3, 8, 1, 2, 3, 0xFFFF)
            assert bank.read_signed(103, 1) == [-1]
            assert _request(sock, struct.pack(">BHH", 0x06, 101, 9)) == struct.pack(">BHH", 6, 101, 9)
            assert _request(sock, struct.pack(">BHH", 0x03, 102, 4)) == bytes([0x83, 0x02])  # past the block
            assert _request(sock, struct.pack(">BHH", 0x03, 100, 0)) == bytes([0x83, 0x03])  # bad count
            assert _request(sock, struct.pack(">BHH", 0x01, 100, 1)) == bytes([0x81, 0x01])  # coils: unsupported
        assert writes == [(100, [1, 2, 3, 0xFFFF]), (101, [9])]
    finally:
        server.stop()
    assert not server.running
