"""End-to-end runs of `specmae pretrain` as users start it."""

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from specmae.audio import synth

TINY = ["--preset", "80x96p16x16", "--size", "tiny", "--quiet", "--batch-size", "8", "--workers", "0",
        "--warmup-epochs", "1", "--set", "model.encoder.depth=2", "--set", "model.decoder.depth=1",
        "--set", "model.decoder.dim=32", "--set", "model.decoder.heads=4"]


def specmae(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "specmae.cli", *args], capture_output=True, text=True)
    if check and proc.returncode:
        raise AssertionError(proc.stderr[-3000:])
    return proc


def test_pretrain_on_folder_reports_bad_files_and_writes_figures(tmp_path):
    src = tmp_path / "audio"
    synth.write_corpus(src, 16, seed=2, duration=1.2)
    sf.write(src / "broken.flac", np.zeros(0, np.float32), 16000)
    (src / "notes.mp3").write_text("not audio")
    out = tmp_path / "run"
    proc = specmae("pretrain", str(src), "--out", str(out), "--epochs", "2", *TINY)
    assert proc.stderr.count("skipping") == 2
    assert "broken.flac" in proc.stderr and "notes.mp3" in proc.stderr
    for name in ["loss.png", "reconstruction.png", "visualize/index.html", "log.jsonl", "config.json",
                 "corpus/manifest.json"]:
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG"
    assert not (out / "probe.json").exists()  # no labels: no probe


def test_builtin_corpus_run_prints_probe_comparison(tmp_path):
    out = tmp_path / "run"
    proc = specmae("pretrain", "--out", str(out), "--epochs", "1", "--set", "train.builtin_clips=48", *TINY)
    results = json.loads((out / "probe.json").read_text())
    assert {"pre-trained", "random init", "chance"} <= set(results)
    assert "| pre-trained |" in proc.stdout and "| random init |" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["--preset", "80x208p16x15"], "does not divide"),
    (["--preset", "eighty"], "unknown input preset"),
    (["--mask-ratio", "1.5"], "must be in (0, 1)"),
    (["--masking", "checkerboard"], "allowed"),
    (["--set", "model.encoder.qkv_bias=none"], "allowed"),
    (["--config", "no-such-config"], "built-in config"),
])
def test_impossible_configurations_fail_at_start_up(tmp_path, args, message):
    proc = specmae("pretrain", "--out", str(tmp_path / "run"), "--quiet", *args, check=False)
    assert proc.returncode != 0
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_folder_without_usable_audio_stops_with_clear_message(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"RIFF0000WAVE")
    proc = specmae("pretrain", str(tmp_path), "--out", str(tmp_path / "run"), *TINY, check=False)
    assert proc.returncode != 0
    assert "none of the 1 audio files could be read" in proc.stderr
    assert "Traceback" not in proc.stderr
