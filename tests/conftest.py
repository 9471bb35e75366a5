import json
import os
from pathlib import Path

import pytest
import torch

from specmae.audio import FrontendConfig
from specmae.model.presets import DecoderConfig, EncoderConfig, ModelConfig


def shared_dir() -> Path:
    """The workplace's shared/ folder (golden data, recordings); tests using it skip when absent."""
    env = os.environ.get("SPECMAE_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


GOLDEN = shared_dir() / "golden"
# Every folder holding a model_config.json is a golden model; tests parametrised over the
# list are skipped (empty parameter set) when the data is absent.
GOLDEN_MODELS = sorted(p.parent.name for p in GOLDEN.glob("*/model_config.json"))
# The golden pre-training forward ran at the official default mask ratio.
GOLDEN_MASK_RATIO = 0.75
FSDD = shared_dir() / "data" / "fsdd"


def golden_spec(folder: str) -> dict:
    """The parsed model_config.json of golden model `folder`."""
    return json.loads((GOLDEN / folder / "model_config.json").read_text())


def golden_model_config(folder: str) -> ModelConfig:
    """The specmae ModelConfig equivalent to the official constructor of golden model `folder`.

    This is the one place that reads the official settings: input and patch size, widths,
    depths, heads, CLS, qkv bias, LayerNorm eps, decoder positions and norm_pix_loss. Without
    CLS the official decoder drops a visible token, so the quirk is on exactly then.
    """
    spec = golden_spec(folder)
    kw = spec["constructor_kwargs"]
    where = GOLDEN / folder / "model_config.json"
    if kw["in_chans"] != 1:
        raise ValueError(f"{where}: in_chans {kw['in_chans']}, expected 1 (one log-mel channel)")
    if "BlockKBiasZero" in kw["block_cls"]:
        qkv_bias = "kzero"
    elif spec["qkv_bias"]:
        qkv_bias = "full"
    else:
        raise ValueError(f"{where}: qkv_bias false: specmae has no bias-free attention")
    (n_mels, n_frames), (patch_f, patch_t) = kw["img_size"], kw["patch_size"]
    use_cls = kw["use_cls_token"]
    encoder = EncoderConfig(n_mels=n_mels, n_frames=n_frames, patch_f=patch_f, patch_t=patch_t,
                            dim=kw["embed_dim"], depth=kw["depth"], heads=kw["num_heads"],
                            mlp_ratio=kw["mlp_ratio"], use_cls=use_cls, qkv_bias=qkv_bias,
                            norm_eps=spec["layer_norm_eps"])
    decoder = DecoderConfig(dim=kw["decoder_embed_dim"], depth=kw["decoder_depth"],
                            heads=kw["decoder_num_heads"], mlp_ratio=kw["mlp_ratio"],
                            pos="2d" if kw["use_2d_dec_pos_embd"] else "1d",
                            norm_pix_loss=kw["norm_pix_loss"], official_no_cls_quirk=not use_cls)
    return ModelConfig(encoder, decoder).validate()


def golden_import_options(folder: str) -> dict:
    """Keyword arguments of load_official (and of load / hear.load_model for a .pth) that
    rebuild golden model `folder`: the settings its weights do not show, from golden_model_config."""
    cfg = golden_model_config(folder)
    return dict(preset=cfg.encoder.preset, heads=cfg.encoder.heads, decoder_heads=cfg.decoder.heads,
                norm_pix_loss=cfg.decoder.norm_pix_loss,
                official_no_cls_quirk=cfg.decoder.official_no_cls_quirk)


def golden_frontend_config(folder: str) -> FrontendConfig:
    """The front-end of golden model `folder`'s official runtime (its `runtime_config`)."""
    rt = golden_spec(folder)["runtime_config"]
    return FrontendConfig(sample_rate=rt["sample_rate"], n_fft=rt["n_fft"], win_length=rt["window_size"],
                          hop_length=rt["hop_size"], n_mels=rt["n_mels"], f_min=float(rt["f_min"]),
                          f_max=float(rt["f_max"]))


@pytest.fixture
def golden():
    if not (GOLDEN / "README.md").is_file():
        pytest.skip(f"golden reference data not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture
def fsdd():
    if not (FSDD / "meta.csv").is_file():
        pytest.skip(f"FSDD recordings not found at {FSDD}")
    return FSDD


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield


def written_before(folder: Path, field: str) -> None:
    """Make the run in `folder` look as if written before config field `field` existed: the field
    is removed from every config.json under it (the run's and its checkpoints')."""
    def drop(value):
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if k != field}
        return value
    for path in folder.rglob("config.json"):
        path.write_text(json.dumps(drop(json.loads(path.read_text())), indent=1))
