import pytest
import torch

from odelt.models import DiT, DiTConfig, save_checkpoint
from odelt.schedules.problem import make_pairs, split

from tests.models_zoo import TINY


def tiny_dit(config: DiTConfig = TINY, seed: int = 0) -> DiT:
    """A random-weight tiny DiT whose velocity is not zero (the zero-init final layer is re-drawn)."""
    torch.manual_seed(seed)
    model = DiT(config)
    torch.nn.init.normal_(model.final.linear.weight, std=0.3)
    torch.nn.init.normal_(model.final.adaLN.weight, std=0.3)
    return model.eval()


@pytest.fixture(scope="session")
def tiny():
    return tiny_dit()


@pytest.fixture(scope="session")
def tiny_pairs(tiny):
    """(train, val, held-out) teacher pairs for the tiny model."""
    train, val = split(make_pairs(tiny, 24, 0, key="tiny"), 12)
    return train, val, make_pairs(tiny, 16, 0, held_out=True, key="tiny")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_checkpoint(tiny, path)
    return path
