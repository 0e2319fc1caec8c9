"""Chunk CRCs: every MCAP chunk selfpose writes carries the CRC-32 of its records, so bytes damaged on disk are an
error naming the file instead of wrong pixels, and `selfpose recover` salvages the intact chunks."""
from __future__ import annotations

import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from selfpose_core.cli.main import main
from selfpose_core.data.recording import Recording
from selfpose_core.data.recording_writer import RecordingWriter
from selfpose_core.data.recovery import damaged_chunks
from selfpose_core.errors import RecordingError
from selfpose_core.types import CameraIntrinsics, Frame

K = CameraIntrinsics(60.0, 60.0, 15.5, 11.5, 32, 24)
STAMPS = [10**18 + i * 10**8 for i in range(6)]


def chunk_crcs(path: Path) -> list[tuple[int, int]]:
    """(stored CRC, CRC-32 of the records) of every chunk of the uncompressed MCAP file ``path``."""
    data = path.read_bytes()
    pos, out = 8, []
    while pos + 9 <= len(data):
        op, size = data[pos], struct.unpack_from("<Q", data, pos + 1)[0]
        if op == 0x06:
            body = data[pos + 9: pos + 9 + size]
            crc = struct.unpack_from("<I", body, 24)[0]
            (n,) = struct.unpack_from("<I", body, 28)
            assert body[32: 32 + n] == b""  # no compression
            (csize,) = struct.unpack_from("<Q", body, 32 + n)
            out.append((crc, zlib.crc32(body[40 + n: 40 + n + csize])))
        if op == 0x02:
            break
        pos += 9 + size
    return out


@pytest.fixture()
def frames(rng) -> list[Frame]:
    return [Frame(rgb=rng.integers(0, 256, (24, 32, 3), dtype=np.uint8), K=K, stamp_ns=s,
                  depth=rng.uniform(0.5, 2.0, (24, 32)).astype(np.float32), T_world_cam=np.eye(4)) for s in STAMPS]


def _write(bag: Path, frames: list[Frame]) -> Path:
    with RecordingWriter(bag, segment_frames=4, depth_format="32FC1") as w:
        w.write_static_tf("world", "table", np.eye(4))
        for f in frames:
            w.write_frame(f)
    return bag


def test_every_chunk_written_carries_its_crc(tmp_path, frames):
    bag = _write(tmp_path / "bag", frames)
    for f in sorted(bag.glob("*.mcap")):
        crcs = chunk_crcs(f)
        assert len(crcs) >= 2 and all(stored == actual != 0 for stored, actual in crcs), (f.name, crcs)
        assert damaged_chunks(f) == []


def test_a_flipped_byte_is_an_error_and_recover_keeps_the_other_frames(tmp_path, frames, capsys):
    bag = _write(tmp_path / "bag", frames)
    f = bag / "bag_0.mcap"
    data = bytearray(f.read_bytes())
    at = bytes(data).find(frames[2].rgb.tobytes())  # frame 2's pixels: one chunk (every frame is flushed)
    assert at > 0
    data[at + 100] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(RecordingError, match=r"1 chunk of bag_0.mcap fails its CRC check \(at byte \d+\): the file "
                                             r"is damaged; `selfpose recover .*bag` salvages the intact chunks"):
        with Recording(bag) as rec:
            list(rec)
    assert main(["inspect", str(bag)]) == 2
    assert "fails its CRC check" in capsys.readouterr().err

    assert main(["recover", str(bag)]) == 0
    assert "1 damaged chunks of bag_0.mcap (CRC mismatch) were left out" in capsys.readouterr().out
    assert (bag / "bag_0.mcap.damaged").read_bytes() == bytes(data)  # the original is kept
    with Recording(bag) as rec:
        assert rec.stamps_ns.tolist() == STAMPS[:2] + STAMPS[3:]
        for got, want in zip(rec, frames[:2] + frames[3:]):
            np.testing.assert_array_equal(got.rgb, want.rgb)
            np.testing.assert_array_equal(got.depth, want.depth)
    assert all(stored == actual != 0 for stored, actual in chunk_crcs(bag / "bag_0.mcap"))  # the salvage has CRCs


def test_recover_of_an_intact_bag_changes_no_storage_file(tmp_path, frames):
    bag = _write(tmp_path / "bag", frames)
    before = {p.name: p.read_bytes() for p in bag.glob("*.mcap")}
    assert main(["recover", str(bag)]) == 0
    assert {p.name: p.read_bytes() for p in bag.glob("*.mcap")} == before
    assert not list(bag.glob("*.damaged")) and not list(bag.glob("*.unclosed"))
    copy = shutil.copytree(bag, tmp_path / "copy")
    with Recording(copy) as rec:
        assert rec.stamps_ns.tolist() == STAMPS
