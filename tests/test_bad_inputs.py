"""Bad input: audio that lies or holds absurd values, unreadable files, stale corpora, folders that
are not ours, leaking or single-class tasks. Each is refused or skipped with a message naming the
input and the reason, and nothing a user had is changed."""

import json
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from specmae.audio import AudioError, FrontendConfig, check_waveform, decode, load_audio, synth
from specmae.cli import main
from specmae.evaluation.tasks import Task, TaskError, read_manifest
from specmae.training import prepare
from specmae.files import read_jsonl, read_tsv
from specmae.training.corpus import Corpus, load_corpus
from specmae.training.prepare import prepare_corpus

FRAMES = 48


def tone(seconds: float = 0.25, rate: int = 16000) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def lying_flac(path: Path) -> Path:
    """A valid 0.25 s FLAC whose STREAMINFO claims 2^36 - 1 frames (about 1,200 hours at 16 kHz)."""
    sf.write(path, tone(), 16000, format="FLAC")
    raw = bytearray(path.read_bytes())
    # 'fLaC', a 4-byte block header, then STREAMINFO: 10 bytes of block and frame sizes, then 64
    # bits holding sample rate (20), channels - 1 (3), bits - 1 (5) and total samples (36).
    packed = int.from_bytes(raw[18:26], "big") | (1 << 36) - 1
    raw[18:26] = packed.to_bytes(8, "big")
    path.write_bytes(bytes(raw))
    return path


def errors_of(corpus: Path) -> dict[str, str]:
    """errors.tsv of a prepared corpus -> {file name: reason}."""
    header, *rows = read_tsv(corpus / "errors.tsv")
    assert header == ["path", "reason"]
    return {Path(path).name: reason for path, reason in rows}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- decoding ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("peak,ok", [(1.0, True), (8.0, True), (2e3, False), (1e30, False)])
def test_samples_far_beyond_full_scale_are_refused(tmp_path, peak, ok):
    path = tmp_path / "loud.wav"
    y = tone()
    y[100] = peak
    sf.write(path, y, 16000, subtype="FLOAT")
    if ok:  # float files overshoot full scale a little; that is still audio
        assert load_audio(path, 16000)[100] == np.float32(peak)
        return
    with pytest.raises(AudioError, match=re.escape(f"{path}: samples up to {peak:.3g}, far beyond full scale (")):
        load_audio(path, 16000)


def test_one_loud_channel_is_caught_before_mixing(tmp_path):
    # +1e30 and -1e30 mix to 0: the check looks at every channel.
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([np.full(800, 1e30), np.full(800, -1e30)], 1).astype(np.float32), 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="far beyond full scale"):
        load_audio(path, 16000)


def test_check_waveform_refuses_absurd_amplitudes():
    with pytest.raises(AudioError, match="clip3: samples up to 5e\\+03"):
        check_waveform(np.array([0.0, -5e3]), name="clip3")
    check_waveform(np.array([0.0, -5e3]), name="clip3", max_abs=None)


def test_header_claiming_more_than_the_file_holds_is_refused_without_allocating(tmp_path):
    path = lying_flac(tmp_path / "lie.flac")
    assert sf.info(str(path)).frames == (1 << 36) - 1
    with pytest.raises(AudioError) as err:
        load_audio(path, 16000)
    msg = str(err.value)
    assert msg.startswith(f"{path}: header claims 68719476735 frames (1.19e+03 h at 16000 Hz)")
    assert f"more than its {path.stat().st_size} bytes can hold" in msg


def test_duration_limit(tmp_path):
    path = tmp_path / "two.wav"
    sf.write(path, tone(2.0), 16000)
    assert len(load_audio(path, 16000, max_seconds=2.0)) == 32000
    with pytest.raises(AudioError, match=f"{path}: 2 s long, over the limit of 1.5 s for one file"):
        load_audio(path, 16000, max_seconds=1.5)


def test_block_reading_gives_the_whole_file(tmp_path, monkeypatch):
    monkeypatch.setattr(decode, "READ_BLOCK", 1000)
    y = np.random.default_rng(0).uniform(-0.5, 0.5, (4321, 2)).astype(np.float32)
    for fmt in ("WAV", "FLAC"):
        path = tmp_path / f"x.{fmt.lower()}"
        sf.write(path, y, 16000, format=fmt)
        np.testing.assert_array_equal(load_audio(path, 16000), sf.read(path, dtype="float32")[0].mean(axis=1))


def test_unreadable_file_says_permission_denied(tmp_path):
    path = tmp_path / "locked.wav"
    sf.write(path, tone(), 16000)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root (or with CAP_DAC_OVERRIDE): chmod 000 does not stop reading; "
                        "the simulated cases below cover the message")
        with pytest.raises(AudioError, match=f"^{path}: permission denied$"):
            load_audio(path, 16000)
    finally:
        path.chmod(0o644)


def test_permission_denied_simulated(tmp_path, monkeypatch):
    path = tmp_path / "locked.wav"
    sf.write(path, tone(), 16000)
    monkeypatch.setattr(decode.os, "access", lambda p, mode: False)
    with pytest.raises(AudioError, match=f"^{path}: permission denied$"):
        load_audio(path, 16000)


def test_libsndfile_system_error_is_explained(tmp_path, monkeypatch):
    # Where the access check passes but opening fails (ACLs, a race): libsndfile says only
    # "System error."; the operating system's own reason is reported instead.
    path = tmp_path / "locked.wav"
    sf.write(path, tone(), 16000)

    def refuse(*args, **kwargs):
        raise sf.LibsndfileError(2, prefix=f"Error opening {str(path)!r}: ")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(decode.sf, "SoundFile", refuse)
    monkeypatch.setattr(decode, "open", denied, raising=False)
    with pytest.raises(AudioError) as err:
        load_audio(path, 16000)
    assert str(err.value) == f"{path}: cannot decode audio (permission denied)"


@pytest.mark.parametrize("content", [b"ID3\x03\x00\x00\x00\x00\x00\x00", bytes(range(256)) * 8],
                         ids=["id3-tag-only", "garbage"])
def test_undecodable_mp3_is_a_decode_error_not_a_missing_file(tmp_path, content):
    path = tmp_path / "song.mp3"
    path.write_bytes(content)
    with pytest.raises(AudioError) as err:
        load_audio(path, 16000)
    msg = str(err.value)
    assert msg == f"{path}: cannot decode audio (no valid MP3 stream: corrupt, truncated or another format)"
    assert "does not exist" not in msg


def test_a_folder_named_like_audio_is_not_a_file(tmp_path):
    (tmp_path / "folder.wav").mkdir()
    with pytest.raises(AudioError, match="folder.wav: not a regular file"):
        load_audio(tmp_path / "folder.wav", 16000)


# --- corpus preparation ------------------------------------------------------------------------------

@pytest.fixture
def audio(tmp_path) -> Path:
    src = tmp_path / "audio"
    synth.write_corpus(src, 4, seed=2, duration=0.5)
    return src


def test_absurd_files_are_skipped_and_statistics_stay_finite(tmp_path, audio, caplog):
    sf.write(audio / "huge.wav", np.full(8000, 1e30, np.float32), 16000, subtype="FLOAT")
    lying_flac(audio / "lie.flac")
    sf.write(audio / "long.wav", tone(3.0), 16000)
    with caplog.at_level(logging.WARNING):
        out = prepare_corpus(audio, tmp_path / "corpus", FrontendConfig(), FRAMES, max_seconds=2.0)
    corpus, stats = load_corpus(out)
    reasons = errors_of(out)
    assert sorted(reasons) == ["huge.wav", "lie.flac", "long.wav"] and len(corpus) == 4
    assert "far beyond full scale" in reasons["huge.wav"] and "header claims" in reasons["lie.flac"]
    assert "over the limit of 2 s" in reasons["long.wav"]
    assert all(reason.startswith(str(audio)) for reason in reasons.values())
    for name in reasons:  # reported once each
        assert sum(name in r.message for r in caplog.records) == 1
    assert np.isfinite(stats.mean).all() and np.isfinite(stats.std).all() and min(stats.std) > 0.5


def test_non_finite_log_mel_is_skipped(tmp_path, audio, monkeypatch):
    real = prepare.load_audio

    def loud(path, rate, max_seconds=None):  # what a front-end would see without the amplitude check
        return 1e20 * tone() if Path(path).name == "00001.wav" else real(path, rate, max_seconds)

    monkeypatch.setattr(prepare, "load_audio", loud)
    out = prepare_corpus(audio, tmp_path / "corpus", FrontendConfig(), FRAMES)
    ((name, reason),) = errors_of(out).items()
    assert name == "00001.wav" and reason.endswith("log-mel is not finite (samples far outside [-1, 1]?)")


def test_statistics_that_are_not_finite_or_constant_name_the_corpus():
    frames = np.zeros((100, 80), np.float32)
    corpus = Corpus.of_array(frames, np.array([0]), np.array([100]), FrontendConfig(), ["a"], source="/data/corpus")
    with pytest.raises(ValueError, match="/data/corpus: every log-mel value is 0 \\(silence only\\?\\)"):
        corpus.stats(FRAMES, n_crops=8)
    frames[3, 5] = np.inf
    with pytest.raises(ValueError, match="/data/corpus: normalisation statistics are not finite"):
        corpus.stats(FRAMES, n_crops=64)
    per_bin = Corpus.of_array(np.zeros((100, 80), np.float32), np.array([0]), np.array([100]),
                              FrontendConfig(stats="per-bin"), ["a"])
    frames = per_bin.shards[0]
    frames[:, :40] = np.random.default_rng(0).normal(size=(100, 40))
    stats = per_bin.stats(FRAMES, n_crops=8)  # constant bins (band-limited audio) are allowed
    assert stats.std[0] > 0.5 and stats.std[-1] == pytest.approx(1e-6)


def test_changed_audio_refuses_the_stale_corpus_of_a_run(tmp_path, audio):
    # What a training run prepares for itself (incremental=False) must stay what it trained on.
    out = prepare_corpus(audio, tmp_path / "corpus", FrontendConfig(), FRAMES, incremental=False)
    before = snapshot(out)
    prepare_corpus(audio, out, FrontendConfig(), FRAMES, incremental=False)  # unchanged: reused as it is
    assert snapshot(out) == before
    changed = sorted(audio.rglob("*.wav"))[1]
    sf.write(changed, tone(0.5), 16000)  # same size and name, other contents
    with pytest.raises(ValueError) as err:
        prepare_corpus(audio, out, FrontendConfig(), FRAMES, incremental=False)
    msg = str(err.value)
    assert msg.startswith(f"{out}: holds a corpus prepared from other audio or settings than {audio} has now")
    assert f"1 file changed: {changed}" in msg and "remove it or prepare into another folder" in msg
    assert snapshot(out) == before
    sf.write(audio / "new.wav", tone(), 16000)
    with pytest.raises(ValueError, match=f"1 file changed: {changed}; 1 file added: {audio / 'new.wav'}"):
        prepare_corpus(audio, out, FrontendConfig(), FRAMES, incremental=False)
    with pytest.raises(ValueError, match="front-end n_mels 80 -> 64"):
        prepare_corpus(audio, out, FrontendConfig(n_mels=64), FRAMES, incremental=False)
    assert snapshot(out) == before
    prepare_corpus(audio, out, FrontendConfig(), FRAMES, rebuild=True, incremental=False)
    corpus, _ = load_corpus(out)
    assert len(corpus) == 5 and snapshot(out) != before
    (audio / "new.wav").unlink()
    with pytest.raises(ValueError, match=f"1 file removed: {audio / 'new.wav'}"):
        prepare_corpus(audio, out, FrontendConfig(), FRAMES, incremental=False)


def write_legacy_corpus(corpus_dir: Path, out: Path) -> Path:
    """The single-file corpus (lms.f16 + index.json) of an older specmae, from a prepared one."""
    corpus, stats = load_corpus(corpus_dir)
    frames = np.concatenate([corpus.shards[s][o:o + n] for s, o, n in zip(corpus.shard, corpus.offsets, corpus.lengths)])
    out.mkdir()
    (out / "lms.f16").write_bytes(frames.astype(np.float16).tobytes())
    names = [corpus.names[i] for i in range(len(corpus))]
    index = dict(files=names, frontend=corpus.frontend.to_dict(), clips=names,
                 offsets=np.cumsum([0, *corpus.lengths[:-1]]).tolist(), lengths=corpus.lengths.tolist(), errors=[],
                 stats_frames=FRAMES, norm_stats=stats.to_json())
    (out / "index.json").write_text(json.dumps(index))
    return out


def test_corpus_of_an_older_specmae_still_loads_and_is_prepared_again_only_when_asked(tmp_path, audio, caplog):
    sharded = prepare_corpus(audio, tmp_path / "corpus", FrontendConfig(), FRAMES)
    old = write_legacy_corpus(sharded, tmp_path / "old")
    with caplog.at_level(logging.WARNING):
        corpus, stats = load_corpus(old)
    assert any("older single-file format" in r.message and "specmae prepare" in r.message for r in caplog.records)
    new, new_stats = load_corpus(sharded)
    assert stats == new_stats and len(corpus) == len(new) == 4
    for clip in range(4):
        np.testing.assert_array_equal(corpus.crop(clip, 0, FRAMES, 0.0), new.crop(clip, 0, FRAMES, 0.0))
    before = snapshot(old)
    with pytest.raises(ValueError, match="older single-file format .* pass --rebuild"):
        prepare_corpus(audio, old, FrontendConfig(), FRAMES)
    assert snapshot(old) == before
    prepare_corpus(audio, old, FrontendConfig(), FRAMES, rebuild=True)
    assert snapshot(old) == snapshot(sharded)


@pytest.mark.parametrize("kind", ["user-files", "foreign-index", "broken-index", "a-file"])
def test_folders_that_are_not_a_corpus_are_never_written(tmp_path, audio, kind):
    out = tmp_path / "mine"
    if kind == "a-file":
        out.write_text("my notes")
        expected = f"{out}: is a file; a prepared corpus is a folder"
    else:
        out.mkdir()
        (out / "notes.txt").write_text("keep me")
        expected = f"{out}: not empty and not a prepared corpus (holds notes.txt)"
        if kind == "foreign-index":
            (out / "index.json").write_text(json.dumps({"pages": [1, 2]}))
            expected = f"{out / 'index.json'}: not a specmae corpus index; not touching {out}"
        if kind == "broken-index":
            (out / "index.json").write_text("{ not json")
            expected = f"{out / 'index.json'}: unreadable"
    before = snapshot(tmp_path / "mine") if out.is_dir() else out.read_bytes()
    with pytest.raises(ValueError) as err:
        prepare_corpus(audio, out, FrontendConfig(), FRAMES, rebuild=True)
    assert str(err.value).startswith(expected)
    assert (snapshot(out) if out.is_dir() else out.read_bytes()) == before


def test_leftovers_of_an_interrupted_preparation_are_prepared_over(tmp_path, audio):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "lms.f16.tmp").write_bytes(b"\0" * 64)
    prepare_corpus(audio, out, FrontendConfig(), FRAMES)
    assert sorted(p.name for p in out.iterdir()) == ["errors.tsv", "manifest.json", "shards"]


def test_cli_prepare_refuses_a_corpus_of_another_front_end_in_one_line(tmp_path, audio, capsys):
    out = tmp_path / "corpus"
    main(["prepare", str(audio), "--out", str(out), "--workers", "0", "--frames", str(FRAMES), "--quiet"])
    before = snapshot(out)
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", str(audio), str(out), "--workers", "0", "--frames", str(FRAMES), "--set", "frontend.f_min=60"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"specmae prepare: {out}: holds a corpus prepared with another front-end (front-end "
                              "f_min 50.0 -> 60.0)") and "--rebuild" in err[-1]
    assert "Traceback" not in "\n".join(err) and snapshot(out) == before


# --- evaluation tasks --------------------------------------------------------------------------------

def manifest(folder: Path, rows: list[tuple[str, str, str]]) -> Path:
    path = folder / "m.csv"
    path.write_text("path,label,split\n" + "".join(f"{p},{label},{split}\n" for p, label, split in rows))
    return path


@pytest.fixture
def clips(tmp_path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    for i in range(8):
        sf.write(folder / f"{i}.wav", tone(0.1) * (i + 1) / 10, 16000)
    return folder


def test_clips_shared_by_train_and_test_are_refused(clips):
    (clips / "sub").mkdir()
    (clips / "link.wav").symlink_to(clips / "5.wav")
    rows = [(f"{i}.wav", "ab"[i % 2], "train") for i in range(6)]
    rows += [("6.wav", "a", "test"), ("sub/../4.wav", "a", "test"), ("link.wav", "b", "test")]
    task = read_manifest(manifest(clips, rows))
    with pytest.raises(TaskError) as err:
        task.splits()
    msg = str(err.value)
    assert isinstance(err.value, ValueError)
    assert "split: 2 test clips are also in train or valid (same file: m.csv line 9 = m.csv line 6, " \
           "m.csv line 10 = m.csv line 7)" in msg
    assert "says nothing about the features" in msg


def test_a_clip_in_two_folds_is_refused(clips):
    rows = [(f"{i}.wav", "ab"[i % 2], f"fold{i % 3}") for i in range(6)] + [("0.wav", "a", "fold1")]
    path = clips / "m.csv"
    path.write_text("path,label,fold\n" + "".join(f"{p},{label},{fold}\n" for p, label, fold in rows))
    with pytest.raises(TaskError, match="fold fold0: 1 test clip is also in train or valid \\(same file: "
                                        "m.csv line 2 = m.csv line 8\\)"):
        read_manifest(path).splits()


def test_in_memory_tasks_compare_the_audio():
    waves = [tone(0.1) * (i + 1) / 10 for i in range(6)]
    task = Task.from_arrays("mem", waves + [waves[2].copy()], list("ababab") + ["a"], ["train"] * 6 + ["test"],
                            sample_rate=16000)
    with pytest.raises(TaskError, match="1 test clip is also in train or valid \\(same audio: clip 6 = clip 2\\)"):
        task.splits()
    fine = Task.from_arrays("mem", waves + [waves[2] * 0.5], list("ababab") + ["a"], ["train"] * 6 + ["test"],
                            sample_rate=16000)
    assert len(fine.splits()) == 1


def test_a_single_class_task_is_refused(clips):
    rows = [(f"{i}.wav", "dog", "train" if i < 6 else "test") for i in range(8)]
    with pytest.raises(TaskError) as err:
        read_manifest(manifest(clips, rows))
    assert str(err.value) == (f"task m ({clips / 'm.csv'}): every clip carries the same label ['dog']: any probe "
                              "scores 100 % on a single-class task, whatever the features; it needs at least "
                              "two classes")
    with pytest.raises(TaskError, match="every clip carries the same labels \\['a', 'b'\\]"):
        Task.from_arrays("mem", [tone(0.1)] * 3, [["a", "b"]] * 3, ["train", "train", "test"], sample_rate=16000)


def test_a_log_cut_short_by_a_kill_reads_without_its_last_line(tmp_path):
    """Every reader of log.jsonl (the loss curve, the fine-tuning curves, the model card, a resumed
    run) goes through files.read_jsonl, which leaves out a line a killed process cut short."""
    from specmae.visualize import plot_loss_curve
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1, "loss": 2.0, "lr": 0.1}\n{"step": 2, "loss": 1.5, "lr": 0.1}\n[1]\n{"step": 3, "lo')
    assert read_jsonl(log) == [{"step": 1, "loss": 2.0, "lr": 0.1}, {"step": 2, "loss": 1.5, "lr": 0.1}]
    pytest.importorskip("matplotlib")
    assert plot_loss_curve(log, tmp_path / "loss.png").stat().st_size > 0
