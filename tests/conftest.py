import os
from pathlib import Path

import pytest
import torch

# The suite's models are tiny: one thread is faster than two (no synchronisation per small op) and
# keeps results independent of the machine's core count.
torch.set_num_threads(1)


def fixtures_dir() -> Path:
    """The official-code fixtures: $UNIMODAL_FIXTURES, else ../shared/fixtures beside the repo."""
    env = os.environ.get("UNIMODAL_FIXTURES")
    return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
