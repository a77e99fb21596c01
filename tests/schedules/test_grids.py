import torch

from odelt.schedules.grids import LD3Grid, grid_from_logits, interleave, logits_from_grid


def test_grid_is_strictly_monotone_with_pinned_endpoints_for_any_logits():
    gen = torch.Generator().manual_seed(0)
    for scale in (0.1, 3.0, 12.0):
        for n in (1, 2, 4, 9):
            g = grid_from_logits(torch.randn(n, generator=gen) * scale)
            assert g.shape == (n + 1,)
            assert float(g[0]) == 0.0 and float(g[-1]) == 1.0
            assert bool((g[1:] > g[:-1]).all())


def test_logits_round_trip_and_gradient_reaches_every_logit():
    grid = [0.0, 0.1, 0.45, 0.7, 1.0]
    xi = logits_from_grid(grid).requires_grad_(True)
    g = grid_from_logits(xi)
    assert torch.allclose(g, torch.tensor(grid), atol=1e-6)
    (g[1:-1] * torch.tensor([1.0, -2.0, 3.0])).sum().backward()
    assert bool((xi.grad.abs() > 0).all())


def test_eval_grid_stays_in_window_and_keeps_endpoints():
    g = LD3Grid([0.0, 0.2, 0.5, 1.0])
    with torch.no_grad():
        g.xi_c.copy_(torch.tensor([5.0, -5.0, 5.0, 5.0]))
    ts = g.grid()
    te = g.eval_grid(ts)
    half_gap = 0.5 * 0.2
    assert te[0].item() == 0.0 and te[-1].item() == 1.0
    assert torch.allclose(te[1:-1] - ts[1:-1], torch.tensor([-half_gap, half_gap]), atol=1e-6)


def test_interleave():
    out = interleave(torch.tensor([0.0, 0.5, 1.0]), torch.tensor([0.2, 0.7]))
    assert torch.allclose(out, torch.tensor([0.0, 0.2, 0.5, 0.7, 1.0]))
