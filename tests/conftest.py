import os
from pathlib import Path

import pytest
import torch


def fixtures_dir() -> Path:
    """The official-code fixtures: $UNIMODAL_FIXTURES, else ../shared/fixtures beside the repo."""
    env = os.environ.get("UNIMODAL_FIXTURES")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
