import os
from pathlib import Path

import pytest
import torch


def shared_dir() -> Path:
    """The workplace's shared/ folder (golden data, recordings); tests using it skip when absent."""
    env = os.environ.get("SPECMAE_SHARED")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared"


GOLDEN = shared_dir() / "golden"
GOLDEN_MODELS = ["80x208p16x16_tiny", "80x200p16x4_tiny"]
FSDD = shared_dir() / "data" / "fsdd"


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
