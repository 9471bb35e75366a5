"""The headless-browser page check (tests/browser.py) itself: it passes a page whose image and
audio load, and reports the ones that do not. Skipped where no chromium is installed."""

import struct
import wave
import zlib

import numpy as np

from browser import check_page, require_chromium


def write_png(path, width=4, height=3):
    """A real RGB PNG, written with the standard library."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + bytes([200, 50, 50]) * width for _ in range(height))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def write_wav(path, seconds=0.5, sr=16000):
    samples = (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * sr)) / sr) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(sr)
        f.writeframes(samples.tobytes())


def test_a_page_whose_files_exist_passes(tmp_path):
    require_chromium()
    write_png(tmp_path / "figure one.png")
    write_wav(tmp_path / "input.wav")
    (tmp_path / "index.html").write_text(
        '<!doctype html><title>ok page</title><img src="figure%20one.png" alt="fig">'
        '<audio controls preload="none" src="input.wav"></audio>'
        '<audio controls><source src="input.wav" type="audio/wav"></audio>')
    result = check_page(tmp_path / "index.html")
    assert result.title == "ok page"
    assert [e.src for e in result.images] == ["figure%20one.png"] and result.images[0].detail == "4x3"
    assert [e.src for e in result.audio] == ["input.wav", "input.wav"]
    assert all(e.detail == "duration 0.500 s" for e in result.audio), result.audio
    assert not result.failed


def test_missing_and_broken_files_are_reported(tmp_path):
    require_chromium()
    write_png(tmp_path / "good.png")
    write_wav(tmp_path / "good.wav")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "broken.wav").write_bytes(b"RIFF0000WAVEnot really")
    (tmp_path / "index.html").write_text(
        '<!doctype html><img src="good.png"><img src="missing.png"><img src="broken.png">'
        '<audio src="good.wav"></audio><audio src="missing.wav"></audio>'
        '<audio><source src="broken.wav" type="audio/wav"></audio>')
    result = check_page(tmp_path / "index.html")
    assert {e.src: e.ok for e in result.images} == {"good.png": True, "missing.png": False, "broken.png": False}
    assert [(e.src, e.ok) for e in result.audio] == [("good.wav", True), ("missing.wav", False),
                                                       ("broken.wav", False)]
    assert sorted(e.src for e in result.failed) == ["broken.png", "broken.wav", "missing.png", "missing.wav"]
