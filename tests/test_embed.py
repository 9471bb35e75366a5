"""`specmae embed`: files and folders in, one output per file or one table, resumable."""

import numpy as np
import pytest
import soundfile as sf

from specmae.audio import load_audio
from specmae.cli import main
from specmae.features.embed import embed_files
from specmae.features.jobs import find_inputs as find_audio
from specmae.features import load
from test_features import tiny_checkpoint

GOOD = ["a/one.wav", "a/sub/two.flac", "hi.wav", "six.wav"]
BAD = ["bad/corrupt.wav", "bad/empty.wav", "bad/nan.wav"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture(scope="module")
def embedder(checkpoint):
    return load(checkpoint)


@pytest.fixture
def corpus(tmp_path):
    """Mono 16 kHz, stereo 44.1 kHz flac, 6 channels at 8 kHz, 96 kHz float; three bad files."""
    root = tmp_path / "corpus"
    rng = np.random.default_rng(0)
    for name, rate, seconds, channels in [("a/one.wav", 16000, 1.5, 1), ("a/sub/two.flac", 44100, 3.0, 2),
                                          ("six.wav", 8000, 2.0, 6), ("hi.wav", 96000, 1.0, 1)]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        sf.write(root / name, rng.uniform(-0.5, 0.5, (int(rate * seconds), channels)), rate)
    (root / "bad").mkdir()
    (root / "bad/corrupt.wav").write_bytes(b"RIFF\x00\x01garbage" * 10)
    (root / "bad/empty.wav").write_bytes(b"")
    sf.write(root / "bad/nan.wav", np.array([0.1, np.nan, 0.2] * 1000, dtype=np.float32), 16000, subtype="FLOAT")
    (root / "notes.txt").write_text("not audio")
    return root


def test_one_output_per_file_equal_to_the_api(embedder, corpus, tmp_path):
    out = tmp_path / "out"
    summary = embed_files(embedder, [corpus], out, progress=False, batch_seconds=4.0)
    assert summary.embedded == 4 and summary.skipped == 0
    assert sorted(name for name, _ in summary.failed) == BAD
    assert [line.split("\t")[0] for line in (out / "errors.tsv").read_text().splitlines()] == BAD
    for name in GOOD:
        with np.load(out / f"{name}.npz") as saved:
            expected = embedder.embed(load_audio(corpus / name, 16000), 16000)
            np.testing.assert_allclose(saved["frames"], expected.frames.numpy(), atol=1e-5, rtol=1e-5)
            np.testing.assert_allclose(saved["clip"], expected.clip.numpy(), atol=1e-5, rtol=1e-5)
            assert np.array_equal(saved["timestamps"], expected.timestamps.numpy())
    assert not (out / "bad").exists() and not list(out.rglob("*.tmp"))


def test_rerun_skips_what_is_done_and_refuses_other_settings(embedder, corpus, tmp_path):
    out = tmp_path / "out"
    embed_files(embedder, [corpus], out, progress=False)
    stamp = (out / "a/one.wav.npz").stat().st_mtime_ns
    again = embed_files(embedder, [corpus], out, progress=False)
    assert (again.embedded, again.skipped, len(again.failed)) == (0, 4, 3)
    assert (out / "a/one.wav.npz").stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="other settings"):
        embed_files(embedder, [corpus], out, progress=False, layers=[0])


def test_an_interrupted_run_leaves_only_complete_files(embedder, corpus, tmp_path, monkeypatch):
    out, calls = tmp_path / "out", []
    original = embedder.embed

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(embedder, "embed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        embed_files(embedder, [corpus], out, progress=False, batch_seconds=0.1)
    monkeypatch.undo()
    written = [p for p in out.rglob("*") if p.is_file() and p.suffix == ".npz"]
    assert len(written) == 1 and not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    np.load(written[0])["frames"]  # complete and readable
    resumed = embed_files(embedder, [corpus], out, progress=False)
    assert (resumed.embedded, resumed.skipped) == (3, 1)


@pytest.mark.parametrize("suffix", [".npz", ".csv"])
def test_one_table(embedder, corpus, tmp_path, suffix):
    table = tmp_path / f"clips{suffix}"
    summary = embed_files(embedder, [corpus / "a", corpus / "six.wav"], table=table, progress=False)
    assert summary.embedded == 3 and (tmp_path / f"clips{suffix}.json").is_file()
    if suffix == ".npz":
        with np.load(table) as data:
            names, clip = data["paths"].tolist(), data["clip"]
    else:
        rows = [line.split(",") for line in table.read_text().splitlines()]
        names, clip = [r[0] for r in rows[1:]], np.array([r[1:] for r in rows[1:]], dtype=np.float32)
    assert names == ["a/one.wav", "a/sub/two.flac", "six.wav"] and clip.shape == (3, 240)
    expected = embedder.embed(load_audio(corpus / "six.wav", 16000), 16000).clip.numpy()
    np.testing.assert_allclose(clip[2], expected, atol=1e-5, rtol=1e-5)
    assert embed_files(embedder, [corpus / "a", corpus / "six.wav"], table=table, progress=False).skipped == 3


def test_output_names_are_unique(tmp_path):
    for folder in ("x", "y"):
        (tmp_path / folder).mkdir()
        sf.write(tmp_path / folder / "clip.wav", np.zeros(1600), 16000)
    assert [n for _, n in find_audio([tmp_path / "x", tmp_path / "y"])] == ["x/clip.wav", "y/clip.wav"]
    assert [n for _, n in find_audio([tmp_path / "x"])] == ["clip.wav"]
    with pytest.raises(ValueError, match="would both be written as 'clip.wav'"):
        find_audio([tmp_path / "x" / "clip.wav", tmp_path / "y" / "clip.wav"])
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        find_audio([tmp_path / "z"])


def test_cli_embed(checkpoint, corpus, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["embed", str(checkpoint), str(corpus), "--out", str(tmp_path / "out"), "--quiet"])
    assert e.value.code == 1
    printed = capsys.readouterr().out
    assert "embedded 4 files" in printed and "failed 3" in printed and "bad/empty.wav" in printed
    main(["embed", str(checkpoint), str(corpus / "a"), "--table", str(tmp_path / "t.npz"), "--quiet",
          "--layers", "0", "2", "--layer-mode", "concat"])
    assert np.load(tmp_path / "t.npz")["clip"].shape == (2, 480)
    with pytest.raises(SystemExit, match="specmae embed: .*no such file"):
        main(["embed", str(checkpoint), str(tmp_path / "missing"), "--out", str(tmp_path / "o2"), "--quiet"])
