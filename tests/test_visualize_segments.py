"""Long files in `specmae visualize`: segments read in pieces equal the whole file's, in bounded memory."""

import tracemalloc

import numpy as np
import pytest
import soundfile as sf
import torch

from specmae.audio import AudioError, FrontendConfig, build_frontend, load_audio
from specmae.audio.stream import FileClip, open_clip
from specmae.visualize import segments
from specmae.visualize.segments import choose_segments, read_segment

FILE_RATE, SECONDS, WIDTH, PATCH = 22050, 150, 96, 16   # resampled to 16 or 32 kHz: both grids meet rarely
LOUDEST = 37   # the segment (of 96 frames at 16 kHz) made loudest


@pytest.fixture(scope="module")
def long_file(tmp_path_factory):
    """2.5 minutes of tones whose level changes every second, louder in one 16 kHz segment; PCM_16."""
    t = np.arange(SECONDS * FILE_RATE) / FILE_RATE
    level = 0.05 + 0.1 * (np.floor(t) % 7) / 7
    level[(t >= LOUDEST * 0.96 + 0.1) & (t < LOUDEST * 0.96 + 0.8)] = 0.9
    noise = np.random.default_rng(0).normal(0, 0.002, t.shape)
    wave = level * np.sin(2 * np.pi * (300 + 40 * (np.floor(t / 3) % 11)) * t) + noise
    path = tmp_path_factory.mktemp("long") / "long.wav"
    sf.write(path, wave.astype(np.float32), FILE_RATE, subtype="PCM_16")
    return path


@pytest.mark.parametrize("frontend", [FrontendConfig(), FrontendConfig.maskspec()], ids=["msm-mae", "maskspec"])
def test_segments_read_in_pieces_equal_the_whole_files(long_file, frontend, monkeypatch):
    monkeypatch.setattr(segments, "BLOCK_SECONDS", 7.0)   # 'loudest' crosses many block edges
    front = build_frontend(frontend)
    whole = load_audio(long_file, frontend.sample_rate)
    with torch.no_grad():
        lms = front(torch.from_numpy(whole))                                  # (F, T) of the whole file
    T, hop = lms.shape[1], frontend.hop_length
    with open_clip(long_file, frontend.sample_rate) as clip:
        assert isinstance(clip, FileClip) and clip.length == len(whole)
        chosen, count = choose_segments(clip, front, WIDTH, PATCH, "all")
        assert count == T // WIDTH + (T % WIDTH >= PATCH) and chosen == list(range(count))
        means = [float(lms[:, k * WIDTH:(k + 1) * WIDTH].mean()) for k in range(count)]
        assert choose_segments(clip, front, WIDTH, PATCH, "loudest") == ([int(np.argmax(means))], count)
        if frontend.sample_rate == 16000:
            assert int(np.argmax(means)) == LOUDEST
        for k in (0, 1, LOUDEST, count // 2, count - 1):
            seg = read_segment(clip, front, WIDTH, k, count)
            t0, t1 = k * WIDTH, min(T, (k + 1) * WIDTH)
            assert seg.real_frames == t1 - t0 and (seg.lms[:, t1 - t0:] == frontend.silence).all()
            # A piece is resampled apart from the rest, so its samples differ from the whole file's
            # by float32 rounding (< 1e-6, ~6e-7 of full scale); the log of a bin 50 dB below the
            # frame's tone magnifies that to ~2e-3 (measured: 1.7e-3 at log-mel -13.6, MSM-MAE
            # units; the values span ~15). On average: 3e-5 in the 0.9-peak segment, ~1e-6 elsewhere.
            np.testing.assert_allclose(seg.wave, whole[t0 * hop:min(t1 * hop, len(whole))], rtol=0, atol=1e-6)
            diff = np.abs(seg.lms[:, :t1 - t0] - lms[:, t0:t1].numpy())
            assert diff.max() < 5e-3 and diff.mean() < 1e-4, (k, diff.max(), diff.mean())


def test_memory_follows_a_block_not_the_file(long_file, monkeypatch):
    """Decoding the whole file would hold its 13 MB of float32 samples (and more resampled):
    read in pieces, numpy's peak stays near one 5 s block."""
    monkeypatch.setattr(segments, "BLOCK_SECONDS", 5.0)
    reads = []
    decode = FileClip._decode
    monkeypatch.setattr(FileClip, "_decode", lambda self, i0, i1: reads.append(i1 - i0) or decode(self, i0, i1))
    front = build_frontend(FrontendConfig())
    tracemalloc.start()
    try:
        with open_clip(long_file, 16000) as clip:
            chosen, count = choose_segments(clip, front, WIDTH, PATCH, "loudest")
            seg = read_segment(clip, front, WIDTH, chosen[0], count)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert seg.index == LOUDEST
    whole_bytes = SECONDS * FILE_RATE * 4
    assert peak < whole_bytes / 6, f"numpy peak {peak / 1e6:.1f} MB for a {whole_bytes / 1e6:.1f} MB file"
    assert max(reads) < 6 * FILE_RATE and sum(reads) < 1.3 * SECONDS * FILE_RATE


def test_bad_long_files_are_named(long_file, tmp_path):
    front = build_frontend(FrontendConfig())
    with open_clip(long_file, 16000) as clip:
        with pytest.raises(AudioError, match=rf"{clip.name}: segment 200 asked for, but its 150 s hold 157 segment"):
            choose_segments(clip, front, WIDTH, PATCH, [199])
    with pytest.raises(AudioError, match="long.wav: 2.5 min long|long.wav: 150 s long, over the limit of 60 s"):
        open_clip(long_file, 16000, max_seconds=60)
    # A NaN far into a float file fails the pass that reads it, naming the file.
    wave = np.zeros(40 * FILE_RATE, np.float32)
    wave[30 * FILE_RATE] = np.nan
    sf.write(tmp_path / "nan.wav", wave, FILE_RATE, subtype="FLOAT")
    with open_clip(tmp_path / "nan.wav", 16000) as clip:
        assert read_segment(clip, front, WIDTH, 0, 42).real_frames == WIDTH   # the first segment is clean
        with pytest.raises(AudioError, match=r"nan.wav: non-finite samples"):
            choose_segments(clip, front, WIDTH, PATCH, "loudest")
    sf.write(tmp_path / "short.wav", np.zeros(500, np.float32), FILE_RATE)
    with open_clip(tmp_path / "short.wav", 16000) as clip, \
            pytest.raises(AudioError, match=r"short.wav: 0.0227 s of audio gives 3 log-mel frames, fewer than one"):
        choose_segments(clip, front, WIDTH, PATCH, "first")


def test_mpeg_is_decoded_whole_and_read_as_the_same_samples(tmp_path):
    from specmae.audio.stream import Clip

    try:
        sf.write(tmp_path / "a.mp3", 0.3 * np.sin(np.arange(3 * FILE_RATE) / 9).astype(np.float32), FILE_RATE,
                 format="MP3")
    except (sf.LibsndfileError, TypeError, ValueError):
        pytest.skip("this libsndfile writes no MP3")
    whole = load_audio(tmp_path / "a.mp3", 16000)
    with open_clip(tmp_path / "a.mp3", 16000) as clip:   # seeking MPEG changes what it decodes
        assert type(clip) is Clip and clip.length == len(whole)
        assert np.array_equal(clip.read(100, 20000), whole[100:20000])
