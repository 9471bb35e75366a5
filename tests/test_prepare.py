"""Sharded corpora: shard boundaries, resuming a killed preparation, incremental updates, a full
disk, list files, other formats, and reading shards from DataLoader workers."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from specmae.audio import FrontendConfig, build_frontend, load_audio, synth
from specmae.cli import main
from specmae.training import shards
from specmae.files import read_tsv
from specmae.training.corpus import INDEX, CropBatches, load_corpus
from specmae.training.prepare import prepare_corpus

FRAMES = 48
SHARD = 20_000  # bytes: three 0.5 s clips (51 frames x 80 bins x 2 bytes = 8,160 bytes each) per shard


def tone(seconds: float = 0.25, rate: int = 16000) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def errors_of(corpus: Path) -> dict[str, str]:
    header, *rows = read_tsv(corpus / "errors.tsv")
    assert header == ["path", "reason"]
    return {Path(path).name: reason for path, reason in rows}


def clips_of(corpus_dir: Path) -> dict[str, np.ndarray]:
    """{source file name: its frames (T, F)} of a prepared corpus."""
    corpus, _ = load_corpus(corpus_dir)
    return {Path(corpus.names[i]).name: corpus.shards[s][o:o + n]
            for i, (s, o, n) in enumerate(zip(corpus.shard, corpus.offsets, corpus.lengths))}


@pytest.fixture
def audio(tmp_path) -> Path:
    src = tmp_path / "audio"
    synth.write_corpus(src, 8, seed=2, duration=0.5)
    return src


def test_shards_close_at_the_size_and_hold_binary_indexes(tmp_path, audio):
    (audio / "empty.wav").write_bytes(b"")
    sf.write(audio / "silent.wav", np.zeros(4000, np.float32), 16000)
    out = prepare_corpus(audio, tmp_path / "corpus", FrontendConfig(), FRAMES, shard_bytes=SHARD)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "specmae-sharded-corpus" and manifest["version"] == 1 and manifest["complete"]
    assert [e["clips"] for e in manifest["shards"]] == [3, 3, 2] and manifest["clips"] == 8
    assert manifest["shard_bytes"] == SHARD and manifest["stats_frames"] == FRAMES
    # Every shard but the last is full; the files that failed are in the shards' sources tables too.
    assert all(e["frames"] * 160 >= SHARD for e in manifest["shards"][:-1])
    assert sum(e["sources"] for e in manifest["shards"]) == 10
    index = np.fromfile(out / "shards" / "00000.idx", INDEX)
    assert index.tolist() == [(0, 0, 51), (1, 51, 51), (2, 102, 51)]
    assert (out / "shards" / "00000.f16").stat().st_size == 153 * 80 * 2
    assert sorted(errors_of(out)) == ["empty.wav", "silent.wav"]
    assert "digital silence" in errors_of(out)["silent.wav"]
    # A clip's frames are its file's log-mel in float16.
    corpus, stats = load_corpus(out)
    name = corpus.names[4]
    lms = build_frontend(FrontendConfig())(torch.from_numpy(load_audio(name, 16000))).T.numpy()
    np.testing.assert_array_equal(corpus.shards[corpus.shard[4]][corpus.offsets[4]:][:corpus.lengths[4]],
                                  lms.astype(np.float16))
    assert stats.to_json() == manifest["norm_stats"]


def test_worker_processes_write_the_same_corpus(tmp_path, audio):
    one = prepare_corpus(audio, tmp_path / "one", FrontendConfig(), FRAMES, shard_bytes=SHARD)
    two = prepare_corpus(audio, tmp_path / "two", FrontendConfig(), FRAMES, workers=2, shard_bytes=SHARD)
    assert snapshot(one) == snapshot(two)


SLOW_PREPARE = """
import sys, time
from specmae.audio import FrontendConfig
from specmae.training import prepare
real = prepare.load_audio
def slow(*args, **kwargs):
    time.sleep(0.15)
    return real(*args, **kwargs)
prepare.load_audio = slow
prepare.prepare_corpus(sys.argv[1], sys.argv[2], FrontendConfig(), int(sys.argv[3]), shard_bytes=int(sys.argv[4]))
"""


def test_kill_minus_9_then_resume_gives_the_uninterrupted_corpus(tmp_path, audio):
    (audio / "empty.wav").write_bytes(b"")
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, str(audio), str(cut), str(FRAMES), str(SHARD)],
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.loads((cut / "manifest.json").read_text())["shards"]:
                break
        except (OSError, ValueError):
            pass
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    manifest = json.loads((cut / "manifest.json").read_text())
    assert not manifest["complete"] and 1 <= len(manifest["shards"]) < 3
    with pytest.raises(ValueError, match="did not finish; run the same `specmae prepare` again"):
        load_corpus(cut)
    # A half-written shard, as a kill during a commit leaves it: discarded on resume.
    nxt = f"{len(manifest['shards']):05d}"
    (cut / "shards" / f"{nxt}.f16").write_bytes(b"\0" * 1000)
    (cut / "shards" / f"{nxt}.f16.tmp").write_bytes(b"\0" * 100)
    # What the committed shards hold (a kill during a commit may also leave an atomic write's
    # .NNNNN.idx.*.tmp beside them: not committed, and removed on resume).
    names = {e["name"] for e in manifest["shards"]}
    committed = {k: v for k, v in snapshot(cut).items() if k.startswith("shards/") and k[7:12] in names}
    assert committed
    prepare_corpus(audio, cut, FrontendConfig(), FRAMES, shard_bytes=SHARD)
    full = prepare_corpus(audio, tmp_path / "full", FrontendConfig(), FRAMES, shard_bytes=SHARD)
    assert snapshot(cut) == snapshot(full)
    assert all(snapshot(cut)[k] == v for k, v in committed.items())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_minus_9_of_prepare_ends_its_workers(tmp_path):
    from test_procs import kill_and_watch_children
    synth.write_corpus(tmp_path / "audio", 400, duration=0.5)
    proc = subprocess.Popen([sys.executable, "-m", "specmae.cli", "prepare", str(tmp_path / "audio"),
                             str(tmp_path / "corpus"), "--workers", "2", "--quiet"],
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stderr=subprocess.DEVNULL)
    workers, left = kill_and_watch_children(proc, 2)
    assert len(workers) == 2 and left == [], (workers, left)


def test_temporary_files_of_a_killed_atomic_write_are_removed_on_resume(tmp_path, audio):
    """A kill inside an atomic write of manifest.json or errors.tsv leaves .<name>.<random>.tmp."""
    full = prepare_corpus(audio, tmp_path / "full", FrontendConfig(), FRAMES, shard_bytes=SHARD)
    first = tmp_path / "first"  # killed while writing its very first manifest
    first.mkdir()
    (first / ".manifest.json.k1ll3d.tmp").write_text('{"format": "specmae-sha')
    assert snapshot(prepare_corpus(audio, first, FrontendConfig(), FRAMES, shard_bytes=SHARD)) == snapshot(full)
    later = tmp_path / "later"  # killed later, with shards committed and the manifest not complete
    prepare_corpus(audio, later, FrontendConfig(), FRAMES, shard_bytes=SHARD)
    manifest = json.loads((later / "manifest.json").read_text())
    manifest["complete"] = False
    (later / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    (later / ".errors.tsv.k1ll3d.tmp").write_text("path\treason\n")
    (later / ".manifest.json.k1ll3d.tmp").write_text("{")
    assert snapshot(prepare_corpus(audio, later, FrontendConfig(), FRAMES, shard_bytes=SHARD)) == snapshot(full)


def test_adding_changing_and_removing_files_prepares_only_what_changed(tmp_path, audio, caplog):
    out = prepare_corpus(audio, tmp_path / "corpus", FrontendConfig(), FRAMES, shard_bytes=SHARD)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "shards").iterdir()}
    sf.write(audio / "new.wav", tone(0.5), 16000)
    (audio / "bad.wav").write_bytes(b"")
    with caplog.at_level(logging.INFO):
        prepare_corpus(audio, out, FrontendConfig(), FRAMES, shard_bytes=SHARD)
    assert "preparing 2 files" in caplog.text
    assert all((p.stat().st_mtime_ns, p.read_bytes()) == v for p, v in before.items())  # untouched
    assert sorted(p.name for p in (out / "shards").iterdir())[-3:] == ["00003.f16", "00003.idx", "00003.src"]
    assert "new.wav" in clips_of(out) and list(errors_of(out)) == ["bad.wav"]
    # Changed: the old clip dropped, the file prepared again; removed: its clip (or error) dropped.
    changed = sorted(audio.rglob("0*.wav"))[1]
    sf.write(changed, tone(0.3), 16000)
    (audio / "new.wav").unlink()
    (audio / "bad.wav").unlink()
    caplog.clear()
    with caplog.at_level(logging.INFO):
        prepare_corpus(audio, out, FrontendConfig(), FRAMES, shard_bytes=SHARD)
    assert "preparing 1 files" in caplog.text and "3 dropped" in caplog.text  # changed, new.wav, bad.wav
    clips, fresh = clips_of(out), clips_of(prepare_corpus(audio, tmp_path / "fresh", FrontendConfig(), FRAMES))
    assert sorted(clips) == sorted(fresh) and len(clips) == 8 and errors_of(out) == {}
    for name in fresh:
        np.testing.assert_array_equal(clips[name], fresh[name])
    assert len(clips[changed.name]) == 31  # 0.3 s, not the 0.5 s it held before
    rows = read_tsv(out / "shards" / "00003.src")
    assert [(Path(r[0]).name, r[3]) for r in rows] == [("bad.wav", "dropped"), ("new.wav", "dropped")]
    corpus, stats = load_corpus(out)
    assert json.loads((out / "manifest.json").read_text())["norm_stats"] == stats.to_json()
    assert len(CropBatches(corpus, FRAMES, 2, seed=0, epoch=0)) == 4


def test_a_full_disk_keeps_the_committed_shards_and_the_run_resumes(tmp_path, audio, monkeypatch):
    writes = []

    def full(file, lms):
        writes.append(1)
        if len(writes) == 5:  # the second clip of the second shard
            raise OSError(errno.ENOSPC, "No space left on device")
        file.write(lms.tobytes())

    monkeypatch.setattr(shards, "write_frames", full)
    out = tmp_path / "corpus"
    with pytest.raises(OSError) as err:
        prepare_corpus(audio, out, FrontendConfig(), FRAMES, shard_bytes=SHARD)
    assert err.value.errno == errno.ENOSPC
    assert str(err.value) == (f"{out}: no space left on the device while writing shard 00001; the 1 shards "
                              "committed so far are intact and the unfinished one was removed: free some space "
                              "and run the same command again to resume")
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.f16", "00000.idx", "00000.src"]
    monkeypatch.undo()
    prepare_corpus(audio, out, FrontendConfig(), FRAMES, shard_bytes=SHARD)
    assert snapshot(out) == snapshot(prepare_corpus(audio, tmp_path / "full", FrontendConfig(), FRAMES,
                                                    shard_bytes=SHARD))


def test_list_files_name_a_subset_and_missing_files_are_reported(tmp_path, audio, caplog):
    files = sorted(p.relative_to(tmp_path).as_posix() for p in audio.rglob("*.wav"))  # audio/<class>/<n>.wav
    names = [f.rsplit("/", 1)[1] for f in files]
    odd = audio / "a\ttab\nand newline.wav"
    sf.write(odd, tone(), 16000)
    (tmp_path / "list.txt").write_text(f"# a subset\n{files[0]}\n\n{tmp_path / files[1]}\naudio/gone.wav\n"
                                       f"{files[0]}\n")
    with caplog.at_level(logging.WARNING):
        out = prepare_corpus(tmp_path / "list.txt", tmp_path / "from-txt", FrontendConfig(), FRAMES)
    assert sorted(clips_of(out)) == names[:2]
    assert errors_of(out) == {"gone.wav": f"{tmp_path / 'audio/gone.wav'}: listed in {tmp_path / 'list.txt'} but "
                                          "not found"}
    assert sum("gone.wav" in r.message for r in caplog.records) == 1
    (tmp_path / "with-header.csv").write_text(f'label,path\nx,{files[2]}\ny,"{odd}"\nz,audio\n')
    out = prepare_corpus(tmp_path / "with-header.csv", tmp_path / "from-csv", FrontendConfig(), FRAMES)
    assert sorted(clips_of(out)) == sorted([names[2], odd.name]) and list(errors_of(out)) == ["audio"]
    assert "listed in" in errors_of(out)["audio"] and "but a folder" in errors_of(out)["audio"]
    assert len((out / "errors.tsv").read_text().splitlines()) == 2  # one line per error, whatever the name
    (tmp_path / "bare.csv").write_text(f"{files[3]},1\n{files[4]},2\n")
    out = prepare_corpus(tmp_path / "bare.csv", tmp_path / "from-bare", FrontendConfig(), FRAMES)
    assert sorted(clips_of(out)) == names[3:5]


def test_corpora_of_another_format_are_refused_with_how_to_prepare_again(tmp_path, audio):
    out = prepare_corpus(audio, tmp_path / "corpus", FrontendConfig(), FRAMES)
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    before = snapshot(out)
    for call in (lambda: load_corpus(out), lambda: prepare_corpus(audio, out, FrontendConfig(), FRAMES)):
        with pytest.raises(ValueError, match=f"{out}: a corpus of format version 99; this specmae reads version 1: "
                                             "prepare the audio again: specmae prepare SRC --out NEW_FOLDER "
                                             r"\(or --rebuild over this one\)"):
            call()
    assert snapshot(out) == before
    prepare_corpus(audio, out, FrontendConfig(), FRAMES, rebuild=True)
    assert json.loads((out / "manifest.json").read_text()) == manifest


def test_dataloader_workers_map_their_own_shards_and_get_the_same_batches(tmp_path, audio):
    out = prepare_corpus(audio, tmp_path / "corpus", FrontendConfig(), FRAMES, shard_bytes=SHARD)
    corpus, _ = load_corpus(out)
    assert all(m is None for m in corpus.shards._maps)  # opening maps nothing
    data = CropBatches(corpus, 64, 2, seed=3, epoch=1)
    here = [data[k] for k in range(len(data))]
    assert here[0].shape == (2, 1, 80, 64) and here[0].dtype == torch.float32
    loader = torch.utils.data.DataLoader(data, batch_size=None, num_workers=2)
    for mine, theirs in zip(here, loader, strict=True):
        assert torch.equal(mine, theirs)
    # 0.5 s clips are 51 frames: the rest of each 64-frame crop is silence.
    assert torch.all(here[0][..., 51:] == np.float32(FrontendConfig().silence))


def test_cli_prepare_takes_the_folder_as_second_argument_and_a_shard_size(tmp_path, audio, capsys):
    main(["prepare", str(audio), str(tmp_path / "corpus"), "--workers", "0", "--frames", str(FRAMES),
          "--shard-size", "8KB", "--quiet"])
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    assert manifest["shard_bytes"] == 8192 and len(manifest["shards"]) == 4
    with pytest.raises(SystemExit):
        main(["prepare", str(audio), str(tmp_path / "a"), "--out", str(tmp_path / "b")])
    assert "name the corpus folder once" in capsys.readouterr().err


def test_a_disk_that_fills_up_while_committing_leaves_the_manifest_as_it_was(tmp_path, audio, monkeypatch):
    real, calls = shards.write_manifest, []

    def full(out, manifest):
        calls.append(len(manifest["shards"]))
        if len(manifest["shards"]) == 2:  # recording the second shard
            raise OSError(errno.ENOSPC, "No space left on device")
        real(out, manifest)

    monkeypatch.setattr(shards, "write_manifest", full)
    out = tmp_path / "corpus"
    with pytest.raises(OSError, match="while writing shard 00001; the 1 shards committed so far are intact"):
        prepare_corpus(audio, out, FrontendConfig(), FRAMES, shard_bytes=SHARD)
    assert [e["name"] for e in json.loads((out / "manifest.json").read_text())["shards"]] == ["00000"]
    assert sorted(p.name for p in (out / "shards").iterdir()) == ["00000.f16", "00000.idx", "00000.src"]


@pytest.fixture
def small_disk(tmp_path):
    """A 60 kB tmpfs, where this machine lets root mount one (else the test skips): a disk that
    really fills up, with the buffered writes and flushes of a real one."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=60k", "tmpfs", str(disk)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and a mountable tmpfs")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_really_full_disk_leaves_committed_shards_and_the_run_resumable(tmp_path, audio, small_disk):
    out = small_disk / "corpus"
    with pytest.raises(OSError) as err:
        prepare_corpus(audio, out, FrontendConfig(), FRAMES, shard_bytes=SHARD)
    assert err.value.errno == errno.ENOSPC and "free some space and run the same command again" in str(err.value)
    committed = [e["name"] for e in json.loads((out / "manifest.json").read_text())["shards"]]
    assert sorted(p.name for p in (out / "shards").iterdir()) == \
        sorted(f"{name}{suffix}" for name in committed for suffix in (".f16", ".idx", ".src"))
    subprocess.run(["mount", "-o", "remount,size=1m", str(small_disk)], check=True)  # space freed
    prepare_corpus(audio, out, FrontendConfig(), FRAMES, shard_bytes=SHARD)
    assert snapshot(out) == snapshot(prepare_corpus(audio, tmp_path / "whole", FrontendConfig(), FRAMES,
                                                    shard_bytes=SHARD))
