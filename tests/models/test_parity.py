"""Parity with upstream's own float32 JAX outputs (tests/fixtures/odelt_jax_small)."""

import numpy as np
import pytest
import torch

from odelt.models import load_checkpoint

TOL = 1e-5


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))


def run(model, cases, length):
    with torch.no_grad():
        out = model(nchw(cases["x"]), torch.from_numpy(cases["t"]), torch.from_numpy(cases["dt_base"]),
                    torch.from_numpy(cases["y"]), length)
    return out.numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="module")
def model(jax_small):
    ckpt, config, _, _ = jax_small
    return load_checkpoint(ckpt, config)


@pytest.mark.parametrize("length", [2, 4])
def test_every_length_matches_upstream(model, jax_small, length):
    cases = jax_small[2]
    err = np.abs(run(model, cases, length) - cases[f"out_l{length}"]).max()
    assert err <= TOL, f"l={length}: max abs error {err:.3g}"


def test_mixed_per_sample_lengths_match_upstream(model, jax_small):
    cases = jax_small[2]
    out = run(model, cases, torch.from_numpy(cases["blocks_mixed"]))
    assert np.abs(out - cases["out_blocks_mixed"]).max() <= TOL


def test_intermediate_activations_match(model, jax_small):
    """Conditioning and every block's full residual output, as upstream records them."""
    cases = jax_small[2]
    t, d, y = (torch.from_numpy(cases[k]) for k in ("t", "dt_base", "y"))
    with torch.no_grad():
        c = model.condition(t, d, y)
        h = model.embed_tokens(nchw(cases["x"]))
        cb = c + model.l_embedder(torch.full_like(y, 4).long())
        np.testing.assert_allclose(c.numpy(), cases["act_l4_conditioning"], atol=TOL)
        np.testing.assert_allclose(model.pos_embed[0].numpy(), cases["act_l4_pos_embed"], atol=1e-6)
        for i in range(4):
            out = model.blocks[i](h, cb)
            np.testing.assert_allclose(out.numpy(), cases[f"act_l4_dit_block_{i}"], atol=TOL)
            h = h + out if i % 2 == 1 else out
