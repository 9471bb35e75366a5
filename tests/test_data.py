"""Corpus preparation, crops and bad input."""

import logging
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from specmae.audio import synth
from specmae.audio import FrontendConfig
from specmae.audio import find_audio_files
from specmae.files import read_tsv
from specmae.training.corpus import CropBatches, corpus_from_waves, load_corpus
from specmae.training.prepare import prepare_corpus


@pytest.fixture(scope="module")
def small_corpus():
    waves, labels = synth.make_corpus(12, seed=3, duration=1.0)
    return corpus_from_waves(waves, FrontendConfig(), labels)


def test_crops_are_deterministic_and_split_across_ranks(small_corpus):
    a = CropBatches(small_corpus, 96, 2, seed=1, epoch=0)
    b = CropBatches(small_corpus, 96, 2, seed=1, epoch=0)
    assert torch.equal(a[3], b[3]) and a[0].shape == (2, 1, 80, 96)
    assert not torch.equal(a[0], CropBatches(small_corpus, 96, 2, seed=1, epoch=1)[0])
    r0, r1 = (CropBatches(small_corpus, 96, 2, seed=1, epoch=0, rank=r, world=2) for r in (0, 1))
    assert set(r0.clips).isdisjoint(r1.clips) and len(r0) == len(r1) == 3


def test_short_clips_are_padded_with_log_eps_silence(small_corpus):
    batch = CropBatches(small_corpus, 208, 4, seed=0, epoch=0)[0]   # clips are 101 frames
    assert torch.all(batch[..., 101:] == np.float32(np.log(np.float32(1.1920929e-07))))
    assert torch.all(batch[..., :101] > np.log(1.1920929e-07) - 1e-3)


def test_crop_matches_frontend_slice(small_corpus):
    clip = small_corpus.crop(5, 10, 40, pad_value=0.0)
    off = small_corpus.offsets[5]
    np.testing.assert_array_equal(clip, small_corpus.shards[0][off + 10: off + 50].T)


def test_prepare_folder_skips_bad_files_and_reuses_cache(tmp_path, caplog):
    src = tmp_path / "audio"
    synth.write_corpus(src, 6, seed=1, duration=1.0)
    (src / "nested").mkdir()
    sf.write(src / "nested" / "stereo.flac", np.random.default_rng(0).uniform(-.5, .5, (8000, 2)), 8000)
    (src / "empty.wav").write_bytes(b"")
    (src / "text.ogg").write_text("not audio")
    sf.write(src / "nan.wav", np.full(400, np.nan, np.float32), 16000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING):
        out = prepare_corpus(src, tmp_path / "corpus", FrontendConfig(), 96)
    corpus, stats = load_corpus(out)
    (mean,), (std,) = stats.mean, stats.std
    header, *errors = read_tsv(out / "errors.tsv")
    assert len(corpus) == 7 and corpus.shards[0].dtype == np.float16 and header == ["path", "reason"]
    assert sorted(path.rsplit("/", 1)[1] for path, _ in errors) == ["empty.wav", "nan.wav", "text.ogg"]
    assert sum("skipping" in r.message for r in caplog.records) == 3
    assert all(str(src) in reason for _, reason in errors)
    assert -20 < mean < 5 and 0.5 < std < 10
    # the stereo 8 kHz file was mixed down and resampled: 1 s -> 101 frames
    assert 101 in corpus.lengths.tolist()
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    prepare_corpus(src, tmp_path / "corpus", FrontendConfig(), 96)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps


def test_folder_without_usable_audio_stops_clearly(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"RIFF")
    with pytest.raises(ValueError, match="none of the 1 audio files could be read"):
        prepare_corpus(tmp_path, tmp_path / "corpus", FrontendConfig(), 96)
    (tmp_path / "a.wav").unlink()
    with pytest.raises(ValueError, match="no audio files"):
        prepare_corpus(tmp_path, tmp_path / "corpus", FrontendConfig(), 96)


def test_find_audio_files_is_recursive_and_sorted(tmp_path):
    for name in ["b/x.WAV", "a.mp3", "c/d/e.flac", "notes.txt"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in find_audio_files(tmp_path)]
    assert found == ["a.mp3", "b/x.WAV", "c/d/e.flac"]


def test_find_audio_files_walks_as_path_rglob_did(tmp_path, monkeypatch):
    """The scandir walk lists what sorted(Path.rglob("*")) + is_audio_file listed, in the same
    (component by component) order: hidden files, mixed-case and odd suffixes, links to files
    (broken ones not), links to folders not followed, a folder named like an audio file."""
    from specmae.audio import find_audio_paths
    from specmae.audio.decode import is_audio_file

    def before(root):
        root = Path(root)
        return [root] if root.is_file() else sorted(p for p in root.rglob("*") if is_audio_file(p))

    for name in ["a.wav", "A.WAV", "b.Flac", "x/y/z.mp3", ".hidden.wav", ".wav", "..wav", "a-b/c.wav", "a/c.wav",
                 "a.b/c.ogg", "a b.wav", "c.txt", "d.", "e.wav.txt", ".hid/f.wav", "a/x.wav/g.wav", "n\u00e9.aiff"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "dirlink").symlink_to(tmp_path / "a")
    (tmp_path / "filelink.wav").symlink_to(tmp_path / "a.wav")
    (tmp_path / "broken.wav").symlink_to(tmp_path / "nowhere.wav")
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "up").symlink_to(tmp_path)
    monkeypatch.chdir(tmp_path)
    for root in [tmp_path, f"{tmp_path}/", ".", "a", "a/../x", tmp_path / "a.wav"]:
        assert find_audio_files(root) == before(root), root
        assert find_audio_paths(root) == [str(p) for p in before(root)], root
    names = [p.relative_to(tmp_path).as_posix() for p in find_audio_files(tmp_path)]
    assert names[:5] == ["..wav", ".hid/f.wav", ".hidden.wav", "A.WAV", "a/c.wav"]  # a/ before a-b/ and a.wav
    assert "filelink.wav" in names and "broken.wav" not in names and not any("dirlink" in n for n in names)


def test_per_bin_statistics_have_one_pair_per_mel_bin():
    waves, _ = synth.make_corpus(40, seed=3)
    glob = corpus_from_waves(waves, FrontendConfig())
    per_bin = corpus_from_waves(waves, FrontendConfig(stats="per-bin"))
    g, p = glob.stats(208, n_crops=200), per_bin.stats(208, n_crops=200)
    assert not g.per_bin and p.per_bin and len(p.mean) == 80
    # The bins' means average to the global mean (every bin has the same number of values).
    assert np.mean(p.mean) == pytest.approx(g.mean[0], rel=1e-9)
    # Low bins hold the tones' energy, the top bins near 8 kHz far less.
    assert p.mean[5] > p.mean[-1]
