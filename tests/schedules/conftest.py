import contextlib

import pytest
import torch

from odelt.models import DiT, DiTConfig, save_checkpoint
from odelt.schedules.problem import make_pairs, split

TINY = DiTConfig(input_size=8, in_channels=1, out_channels=1, hidden_size=32, depth=4, num_heads=2,
                 depth_group=2, depth_min=2, num_classes=10)


def tiny_dit(config: DiTConfig = TINY, seed: int = 0) -> DiT:
    """A random-weight tiny DiT whose velocity is not zero (the zero-init final layer is re-drawn)."""
    torch.manual_seed(seed)
    model = DiT(config)
    torch.nn.init.normal_(model.final.linear.weight, std=0.3)
    torch.nn.init.normal_(model.final.adaLN.weight, std=0.3)
    return model.eval()


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run much faster on one thread (no oversubscription of CI's 2 shared cores)."""
    with threads(1):
        yield


@pytest.fixture(scope="session")
def tiny():
    return tiny_dit()


@pytest.fixture(scope="session")
def tiny_pairs(tiny):
    """(train, val, held-out) teacher pairs for the tiny model."""
    with threads(1):
        train, val = split(make_pairs(tiny, 24, 0, key="tiny"), 12)
        return train, val, make_pairs(tiny, 16, 0, held_out=True, key="tiny")


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_checkpoint(tiny, path)
    return path
