"""ModbusHand over Modbus RTU, through a pseudo-terminal to a small RTU responder."""
from __future__ import annotations

import os
import select
import threading
import tty

import pytest

from inference_utils.devices import ModbusHand
from inference_utils.hand_emulator import HandEmulator


def crc16(data: bytes) -> int:
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def frame_length(buf: bytes) -> int | None:
    """Length of the RTU request at the start of ``buf`` (None if not known yet)."""
    if len(buf) < 2:
        return None
    if buf[1] in (0x03, 0x04, 0x06):
        return 8
    if buf[1] == 0x10:
        return None if len(buf) < 7 else 9 + buf[6]
    return 4


class RtuResponder:
    """Answers RTU requests on the master side of a pty using the hand emulator's registers."""

    def __init__(self, emulator: HandEmulator, unit: int = 1):
        self.emulator = emulator
        self.unit = unit
        self.master, slave = os.openpty()
        tty.setraw(self.master)
        self.slave_path = os.ttyname(slave)
        self._slave = slave
        self._stop = threading.Event()
        self.frames = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        buf = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.master], [], [], 0.05)
            if not ready:
                continue
            try:
                buf += os.read(self.master, 256)
            except OSError:
                return
            while (n := frame_length(buf)) is not None and len(buf) >= n:
                request, buf = buf[:n], buf[n:]
                if crc16(request[:-2]) != int.from_bytes(request[-2:], "little") or request[0] != self.unit:
                    continue
                pdu = self.emulator.server.process_pdu(request[1:-2])
                body = bytes([self.unit]) + pdu
                os.write(self.master, body + crc16(body).to_bytes(2, "little"))
                self.frames += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=1)
        os.close(self.master)
        os.close(self._slave)


@pytest.fixture
def rtu():
    emu = HandEmulator(port=0, speed_scale=4.0).start(serve_tcp=False)  # registers + motion model only
    responder = RtuResponder(emu)
    yield emu, responder
    emu.stop()
    responder.close()


def test_modbus_hand_over_rtu(rtu):
    emu, responder = rtu
    with ModbusHand(serial_port=responder.slave_path, baudrate=115200, timeout_s=0.5, speed=900) as hand:
        assert emu.read_block("speed_set").tolist() == [900] * 6
        hand.send([0.3] * 6)
        assert emu.read_block("angle_set").tolist() == [300] * 6
        assert hand.read().shape == (6,)
        assert hand.read_errors().tolist() == [0] * 6
    assert responder.frames >= 5
