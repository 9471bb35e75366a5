"""hf:// names and `specmae push`: the real huggingface_hub client against a local stand-in of the Hub.

hub_server.FakeHub serves repositories in the Hub's download layout on 127.0.0.1; huggingface_hub's
endpoint, cache, token file and offline switch (read from the environment when it is imported)
are pointed at it and at a temporary folder, never at the user's.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hub_server import FakeHub
from test_features import noise, tiny_checkpoint

import specmae
from specmae import hear
from specmae.checkpoint import CheckpointError, commit_latest, load, save_checkpoint
from specmae.checkpoint.card import stage
from specmae.cli import UserError, main
from specmae.config import FinetuneConfig, FinetuneInfo, RunConfig
from specmae.features.predict import Predictor, predict_files
from specmae.model.classifier import Classifier

hf = pytest.importorskip("huggingface_hub")

SR = 16000


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A FakeHub with huggingface_hub pointed at it, its cache and token file in tmp_path."""
    from huggingface_hub import constants

    fake = FakeHub()
    url, stop = fake.serve()
    home = tmp_path / "hf-home"
    for key, value in vars(constants).copy().items():  # every path under HF_HOME: cache, token, registries
        if isinstance(value, str) and value.startswith(constants.HF_HOME):
            monkeypatch.setattr(constants, key, str(home) + value[len(constants.HF_HOME):])
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(name, raising=False)
    fake.cache = home / "hub"
    yield fake
    stop()


def files_of(folder: Path, *names) -> dict:
    return {n: (folder / n).read_bytes() for n in names or [p.name for p in folder.iterdir()]}


def checkpoint_files(tmp_path, name="ck", seed=0, **extra) -> dict:
    folder = tiny_checkpoint(tmp_path / name, seed=seed)
    return {**files_of(folder, "config.json", "model.safetensors"), **extra}


def finetuned_checkpoint(path: Path) -> Path:
    """A small fine-tuned classifier checkpoint (random head), as specmae finetune writes one."""
    base = load(tiny_checkpoint(path.with_name(path.name + "-base")))
    cfg = FinetuneConfig.from_dict({"model": {"n_frames": base.config.model.encoder.n_frames}})
    info = FinetuneInfo(["dog", "cat", "bird"], "multiclass", "accuracy", cfg, "pets", "fold-1",
                        source={"path": "hf://org/base", "step": 0, "epoch": None})
    torch.manual_seed(0)
    model = Classifier(base.config.model.encoder, 3, cfg.model)
    meta = {k: v for k, v in base.to_json().items() if k not in ("finetune",)}
    return save_checkpoint(path, model.state_dict(), dict(meta, finetune=info.to_dict()))


def one_line_error(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for word in words:
        assert word in message, (word, message)
    return message


# --- loading by name ------------------------------------------------------------------------------


def test_load_by_name_fetches_only_what_a_checkpoint_needs_and_embeds_like_the_folder(hub, tmp_path):
    local = tiny_checkpoint(tmp_path / "ck")
    hub.add("org/tiny", {**files_of(local), "README.md": b"# card", "loss.png": b"png"})
    model = specmae.load("hf://org/tiny")
    assert isinstance(model, specmae.Embedder) and not isinstance(model, Predictor)
    x = noise(1.0)
    torch.testing.assert_close(model.embed(x, SR).frames, specmae.load(local).embed(x, SR).frames, rtol=0, atol=0)
    assert hub.downloads("config.json") == hub.downloads("model.safetensors") == 1
    for name in ("train_state.pt", "README.md", "loss.png"):
        assert hub.downloads(name) == 0, name
    assert model.checkpoint.path.is_relative_to(hub.cache)  # huggingface_hub's cache, in its layout
    assert (hub.cache / "models--org--tiny" / "refs" / "main").is_file()


def test_revisions_branch_tag_and_commit(hub, tmp_path):
    main_sha = hub.add("org/m", checkpoint_files(tmp_path, "a", seed=0))
    tag_sha = hub.add("org/m", checkpoint_files(tmp_path, "b", seed=1), ref="v1")
    x = noise(0.5)
    main_out, tag_out = (specmae.load(n).embed(x, SR).frames for n in ("hf://org/m", "hf://org/m@v1"))
    assert not torch.equal(main_out, tag_out)
    torch.testing.assert_close(specmae.load(f"hf://org/m@{tag_sha}").embed(x, SR).frames, tag_out, rtol=0, atol=0)
    assert load(f"hf://org/m@{main_sha}").path.name == main_sha
    with pytest.raises(CheckpointError) as e:
        load("hf://org/m@v2")
    one_line_error(e, "hf://org/m@v2", "no revision 'v2'")


def test_offline_mode_reuses_the_cache_and_names_what_is_missing(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    hub.add("org/m", checkpoint_files(tmp_path))
    online = load("hf://org/m")
    seen = len(hub.requests)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    offline = load("hf://org/m")
    assert offline.path == online.path and len(hub.requests) == seen  # not one request
    with pytest.raises(CheckpointError) as e:
        load("hf://org/other")
    one_line_error(e, "hf://org/other", "offline (HF_HUB_OFFLINE=1)", "not in the cache")
    assert len(hub.requests) == seen


def test_hub_errors_are_one_line_naming_the_repository(hub, tmp_path, monkeypatch):
    files = checkpoint_files(tmp_path)
    hub.add("org/private", files, private=True)
    hub.add("org/gated", files, gated=True)
    hub.add("org/weights-only", {"README.md": b"hi", "pytorch_model.bin": b"\0"})
    with pytest.raises(CheckpointError) as e:
        load("hf://org/missing")
    one_line_error(e, "hf://org/missing", "no such repository", "private")
    with pytest.raises(CheckpointError) as e:
        load("hf://org/private")
    one_line_error(e, "hf://org/private", "HF_TOKEN")
    with pytest.raises(CheckpointError) as e:
        load("hf://org/gated")
    one_line_error(e, "hf://org/gated", "gated", "ask for access")
    with pytest.raises(CheckpointError) as e:
        load("hf://org/weights-only")
    one_line_error(e, "hf://org/weights-only", "not a specmae checkpoint", "holds README.md, pytorch_model.bin")
    for bad in ("hf://", "hf://a/b/c", "hf://org/m@"):
        with pytest.raises(CheckpointError, match="expected hf://ORG/NAME"):
            load(bad)
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")  # huggingface_hub's own token handling
    with pytest.raises(CheckpointError) as e:
        load("hf://org/private")
    one_line_error(e, "hf://org/private", "refused the token")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    assert load("hf://org/private").step == 0 and load("hf://org/gated").step == 0


def test_a_foreign_or_newer_config_is_refused_before_any_weight_is_downloaded(hub, tmp_path):
    files = checkpoint_files(tmp_path)
    hub.add("org/bert", {"config.json": json.dumps({"model_type": "bert"}).encode(),
                         "model.safetensors": files["model.safetensors"]})
    newer = {**json.loads(files["config.json"]), "version": 2}
    hub.add("org/newer", {**files, "config.json": json.dumps(newer).encode()})
    broken = {**json.loads(files["config.json"]), "norm_stats": [1.0]}
    hub.add("org/broken", {**files, "config.json": json.dumps(broken).encode()})
    with pytest.raises(CheckpointError) as e:
        load("hf://org/bert")
    one_line_error(e, "hf://org/bert", "model_type='bert'", "holds config.json, model.safetensors")
    with pytest.raises(CheckpointError) as e:
        load("hf://org/newer")
    one_line_error(e, "hf://org/newer", "version 2", "upgrade")
    with pytest.raises(CheckpointError) as e:
        load("hf://org/broken")
    one_line_error(e, "hf://org/broken", "invalid checkpoint config", "norm_stats")
    assert hub.downloads("model.safetensors") == 0


def test_an_interrupted_download_resumes(hub, tmp_path):
    hub.add("org/m", checkpoint_files(tmp_path))
    hub.faults["model.safetensors"] = [503]
    with pytest.raises(CheckpointError) as e:
        load("hf://org/m")
    one_line_error(e, "hf://org/m", "download interrupted", "run again")
    assert not list(hub.cache.rglob("model.safetensors"))  # nothing half-written in the snapshot
    load("hf://org/m")  # the next call fetches what is missing: the weights, not the config again
    assert hub.downloads("config.json") == 1 and hub.downloads("model.safetensors") == 2
    # A connection cut in the middle of the weights: huggingface_hub tries again within the call.
    files = checkpoint_files(tmp_path, "n", seed=3)
    sha = hub.add("org/n", files)
    hub.faults["model.safetensors"] = ["cut"]
    assert (load("hf://org/n").path / "model.safetensors").read_bytes() == files["model.safetensors"]
    assert sum(m == "GET" and p == f"/org/n/resolve/{sha}/model.safetensors" for m, p, _ in hub.requests) == 2


def test_a_finetuned_repository_loads_as_a_predictor_everywhere(hub, tmp_path):
    folder = finetuned_checkpoint(tmp_path / "ft")
    hub.add("org/pets", files_of(folder))
    model = specmae.load("hf://org/pets")
    assert isinstance(model, Predictor) and model.labels == ["dog", "cat", "bird"]
    audio = tmp_path / "audio"
    audio.mkdir()
    import soundfile as sf
    sf.write(audio / "a.wav", noise(0.5).numpy(), SR)
    predict_files(model, [audio], tmp_path / "preds.csv", checkpoint="hf://org/pets", progress=False)
    assert json.loads((tmp_path / "preds.csv.json").read_text())["checkpoint"]["path"] == "hf://org/pets"


def test_every_consumer_takes_the_name(hub, tmp_path, capsys):
    import soundfile as sf

    hub.add("org/tiny", checkpoint_files(tmp_path))
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "a.wav", noise(0.5).numpy(), SR)
    main(["embed", "hf://org/tiny", str(audio), "--out", str(tmp_path / "emb"), "--quiet", "--workers", "1"])
    assert np.load(tmp_path / "emb" / "a.wav.npz")["frames"].shape[1] == 240
    main(["export", "hf://org/tiny", "--out", str(tmp_path / "enc.pt"), "--format", "torchscript"])
    assert (tmp_path / "enc.pt").is_file()
    assert hear.load_model("hf://org/tiny").scene_embedding_size == 240
    from specmae.evaluation.embedders import model_embedders
    identity = model_embedders({"m": "hf://org/tiny"}, baselines=())[0].identity  # by content, as for a folder
    assert identity["kind"] == "checkpoint" and len(identity["weights_sha256"]) == 64
    with pytest.raises(UserError) as e:
        main(["embed", "hf://org/nothing", str(audio), "--out", str(tmp_path / "emb2")])
    assert "specmae embed: hf://org/nothing: no such repository" in str(e.value)


def test_without_huggingface_hub_a_name_asks_for_the_extra_and_folders_never_need_it(tmp_path, monkeypatch):
    local = tiny_checkpoint(tmp_path / "ck")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # `import huggingface_hub` fails
    assert load(local).step == 0
    with pytest.raises(CheckpointError, match=r"hf://org/m: .*huggingface_hub.*pip install 'specmae\[hub\]'"):
        load("hf://org/m")


# --- publishing -----------------------------------------------------------------------------------


def pretraining_run(tmp_path) -> Path:
    """A run folder as specmae pretrain leaves it: checkpoints, config, log, figures, probe."""
    run = tmp_path / "run"
    tiny_checkpoint(run / "checkpoints" / "step-00000010")
    ck = tiny_checkpoint(run / "checkpoints" / "step-00000020", seed=1)
    raw = json.loads((ck / "config.json").read_text())
    save_checkpoint(ck, load(ck).model.state_dict(), dict({k: v for k, v in raw.items() if k not in ("format", "version")},
                    step=20, epoch=2.0), train_state={"step": 20})
    commit_latest(run / "checkpoints", "step-00000020")
    cfg = RunConfig.from_dict({k: raw[k] for k in ("model", "frontend", "masking", "train")})
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    (run / "log.jsonl").write_text('{"step": 10, "loss": 0.9}\n{"step": 20, "loss": 0.8125}\n')
    for name in ("loss.png", "reconstruction.png"):
        (run / name).write_bytes(b"\x89PNG fake")
    (run / "probe.json").write_text(json.dumps({"pre-trained": 0.68, "random init": 0.573, "chance": 0.087}))
    return run


def card_of(folder: Path):
    from huggingface_hub import ModelCard
    return ModelCard.load(folder / "README.md")


def test_push_to_folder_writes_the_newest_checkpoint_and_a_card_the_hub_reads(tmp_path, capsys):
    run = pretraining_run(tmp_path)
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    (evaluation / "report.json").write_text(json.dumps({"tasks": {"esc50": {"metric": "accuracy", "results": {
        "pre-trained": {"mean": 0.8, "std": 0.02}, "random init": {"mean": 0.3, "std": None}}}}}))
    out = tmp_path / "upload"
    main(["push", str(run), "org/tiny", "--to-folder", str(out), "--license", "mit", "--report", str(evaluation)])
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "loss.png", "model.safetensors",
                                                     "reconstruction.png"]
    assert files_of(out, "model.safetensors") == files_of(run / "checkpoints" / "step-00000020", "model.safetensors")
    card = card_of(out)
    data = card.data.to_dict()
    assert data["library_name"] == "specmae" and data["license"] == "mit"
    assert data["pipeline_tag"] == "feature-extraction" and "specmae" in data["tags"] and "base_model" not in data
    text = card.text
    for part in ['specmae.load("hf://org/tiny")', "80 x 208 log-mel frames (2.08 s)", "built-in synthetic corpus, "
                 "2000 clips", "20 optimizer steps (2 epochs)", "0.8125", "| pre-trained | 68.0 % |",
                 "| esc50 | accuracy | pre-trained | 80.0 ± 2.0 |", "![training loss](loss.png)",
                 "![reconstructions of held-out clips](reconstruction.png)"]:
        assert part in text, part
    assert "wrote" not in capsys.readouterr().err
    with pytest.raises(UserError, match=r"already holds files \(README.md, config.json, loss.png, \.\.\.\)\. "
                                        r"Choose another output, pass --overwrite"):  # never written over
        main(["push", str(run), "org/tiny", "--to-folder", str(out)])
    card = (out / "README.md").read_text()
    main(["push", str(run), "org/tiny", "--to-folder", str(out), "--overwrite"])
    aside = [p for p in tmp_path.iterdir() if p.name.startswith(f"{out.name}.old-")]
    assert len(aside) == 1 and (aside[0] / "README.md").read_text() == card and (out / "README.md").is_file()
    main(["push", str(run), "org/tiny", "--to-folder", str(tmp_path / "with-state"), "--with-train-state"])
    assert (tmp_path / "with-state" / "train_state.pt").is_file()


def test_push_refuses_a_run_without_checkpoint_and_bad_names(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text("")
    with pytest.raises(UserError, match=f"specmae push: {run}: not a specmae checkpoint"):
        main(["push", str(run), "org/x", "--to-folder", str(tmp_path / "out")])
    assert not (tmp_path / "out").exists()
    for repo in ("org/x@v1", "x", "a/b/c"):
        with pytest.raises(UserError, match="ORG/NAME"):
            main(["push", str(run), repo, "--to-folder", str(tmp_path / "out")])


def test_push_of_a_finetuned_run_names_its_base_model_and_scores(tmp_path):
    run = tmp_path / "ft-run"
    finetuned_checkpoint(run / "fold-1" / "checkpoints" / "best")
    (run / "latest").write_text("fold-1/checkpoints/best\n")
    (run / "config.json").write_text(json.dumps({"source": "hf://org/base@v1", "task": {}, "finetune": {}}))
    (run / "report.json").write_text(json.dumps({
        "task": {"name": "pets", "source": "pets.csv", "clips": 90, "classes": ["dog", "cat", "bird"],
                 "metric": "accuracy"},
        "folds": [{}, {}], "fine_tuned": {"mean": 0.9, "std": 0.01}, "frozen_probe": {"mean": 0.7, "std": None},
        "chance": 0.33}))
    (run / "curves.png").write_bytes(b"\x89PNG")
    out = stage(run, tmp_path / "up", "org/pets", revision="v2")
    card = card_of(out)
    assert card.data.base_model == "org/base" and card.data.pipeline_tag == "audio-classification"
    for part in ['specmae.load("hf://org/pets@v2")', "model.predict(", "pets (multiclass, 3 classes: dog, cat, bird)",
                 "| fine-tuned | 90.0 ± 1.0 |", "| frozen probe of the starting encoder | 70.0 |",
                 "90 clips, 3 classes", "![training loss and validation metric per fold](curves.png)"]:
        assert part in card.text, part
    assert not (out / "train_state.pt").exists()
    assert card_of(stage(run, tmp_path / "up2", "org/pets", base_model="me/other")).data.base_model == "me/other"
