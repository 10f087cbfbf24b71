"""Expert layer: gather + bmm equals a plain loop over experts (outputs and gradients); sparse rows only."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from memexp.mome.layer import (
    ExpertLinear,
    RoutingState,
    bytes_per_expert,
    check_bank_size,
    expert_delta,
    expert_delta_per_token,
)


def loop_delta(x, ids, weights, a_w, b_w, rank):
    """Oracle: y[b] = sum_j w[b, j] * B_j A_j x[b], one expert at a time (ids (B, K) or (B, T, K))."""
    bsz, seq, d_in = x.shape
    d_out = b_w.shape[1] // rank
    out = torch.zeros(bsz, seq, d_out, dtype=x.dtype)
    for b in range(bsz):
        for t in range(seq):
            row_ids = ids[b] if ids.dim() == 2 else ids[b, t]
            row_w = weights[b] if weights.dim() == 2 else weights[b, t]
            for e, w in zip(row_ids.tolist(), row_w):
                a = a_w[e].view(rank, d_in)
                bb = b_w[e].view(rank, d_out)
                out[b, t] += w * (bb.t() @ (a @ x[b, t]))
    return out


def tables(num_experts=11, rank=3, d_in=6, d_out=5, sparse=True):
    torch.manual_seed(0)
    a = nn.Embedding(num_experts, rank * d_in, sparse=sparse)
    b = nn.Embedding(num_experts, rank * d_out, sparse=sparse)
    return a, b


@pytest.mark.parametrize("per_token", [False, True])
def test_gather_bmm_equals_loop_outputs_and_gradients(per_token):
    rank = 3
    a, b = tables(rank=rank)
    a_ref = a.weight.detach().clone().requires_grad_(True)
    b_ref = b.weight.detach().clone().requires_grad_(True)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, generator=g, requires_grad=True)
    shape = (2, 4, 4) if per_token else (2, 4)
    ids = torch.randint(0, 11, shape, generator=g)
    ids[0, ..., 1] = ids[0, ..., 0]  # a repeated expert in one row must count twice
    w = torch.rand(shape, generator=g).requires_grad_(True)
    fast = (expert_delta_per_token if per_token else expert_delta)(x, ids, w, a, b, rank)
    x_ref = x.detach().clone().requires_grad_(True)
    w_ref = w.detach().clone().requires_grad_(True)
    slow = loop_delta(x_ref, ids, w_ref, a_ref, b_ref, rank)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    upstream = torch.randn_like(slow)
    (fast * upstream).sum().backward()
    (slow * upstream).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(w.grad, w_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(a.weight.grad.to_dense(), a_ref.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(b.weight.grad.to_dense(), b_ref.grad, rtol=1e-5, atol=1e-5)


def test_only_gathered_rows_get_gradients():
    a, b = tables(num_experts=50)
    ids = torch.tensor([[3, 7], [7, 40]])
    out = expert_delta(torch.randn(2, 3, 6), ids, torch.ones(2, 2), a, b, 3)
    out.sum().backward()
    assert a.weight.grad.is_sparse and b.weight.grad.is_sparse
    rows = a.weight.grad.coalesce().indices()[0].tolist()
    assert sorted(set(rows)) == [3, 7, 40]


def test_expert_linear_starts_equal_to_base_and_switches_off():
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    state = RoutingState()
    layer = ExpertLinear(base, num_experts=4, rank=2, routing=state)
    x = torch.randn(2, 3, 6)
    state.ids, state.weights = torch.tensor([[0, 1], [2, 3]]), torch.full((2, 2), 0.5)
    assert torch.equal(layer(x), base(x))  # B = 0 at init
    nn.init.normal_(layer.B.weight)
    assert not torch.allclose(layer(x), base(x))
    expected = base(x) + loop_delta(x, state.ids, state.weights, layer.A.weight, layer.B.weight, 2)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    state.enabled = False
    assert torch.equal(layer(x), base(x))
    assert not base.weight.requires_grad


def test_single_expert_bank():
    state = RoutingState(ids=torch.zeros(1, 1, dtype=torch.long), weights=torch.ones(1, 1))
    layer = ExpertLinear(nn.Linear(4, 4), num_experts=1, rank=1, routing=state)
    nn.init.ones_(layer.B.weight)
    x = torch.randn(1, 2, 4)
    a = layer.A.weight[0]
    torch.testing.assert_close(layer(x), layer.base(x) + (x @ a)[..., None].expand(1, 2, 4))


def test_bytes_per_expert_by_hand():
    assert bytes_per_expert(1, 4096, 4096, torch.bfloat16) == 16384
    layer = ExpertLinear(nn.Linear(6, 5), 3, rank=2, routing=RoutingState())
    assert layer.bytes_per_expert() == 2 * (6 + 5) * 4
    assert layer.A.weight.numel() * 4 + layer.B.weight.numel() * 4 == 3 * layer.bytes_per_expert()


@pytest.mark.parametrize(
    ("num_experts", "rank", "k", "message"),
    [(10, 1, 11, "k=11"), (10, 0, 2, "rank=0"), (10, -2, 2, "rank=-2"), (0, 1, None, "num_experts=0")],
)
def test_bad_bank_sizes_are_refused(num_experts, rank, k, message):
    with pytest.raises(ValueError, match=message):
        check_bank_size(num_experts, rank, k)
