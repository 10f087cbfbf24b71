"""RowAdam: each row follows dense Adam over its own gradients only (the oracle), whatever else trains."""

import pytest
import torch
from torch import nn

from decoding.errors import UserError
from memexp.mome.row_adam import RowAdam


def test_each_row_follows_dense_adam_over_its_own_gradients():
    torch.manual_seed(0)
    table = nn.Embedding(6, 3, sparse=True)
    start = table.weight.detach().clone()
    opt = RowAdam(table.parameters(), lr=0.05)
    target = torch.randn(6, 3)
    seen: dict[int, list[torch.Tensor]] = {r: [] for r in range(6)}
    # row 0 every step, row 1 every third step, row 4 once, rows 2, 3, 5 never: like facts in batches
    schedule = [[0, 1] if t % 3 == 0 else [0] for t in range(12)]
    schedule[5].append(4)
    for rows in schedule:
        ids = torch.tensor(rows)
        opt.zero_grad()
        loss = ((table(ids) - target[ids]) ** 2).sum()
        loss.backward()
        for r, g in zip(rows, table.weight.grad.coalesce().to_dense()[ids]):
            seen[r].append(g.clone())
        opt.step()
    for r in range(6):  # the oracle: torch's Adam on that row alone, fed the row's gradients in order
        row = nn.Parameter(start[r].clone())
        ref = torch.optim.Adam([row], lr=0.05)
        for g in seen[r]:
            row.grad = g
            ref.step()
        torch.testing.assert_close(table.weight[r], row.detach(), rtol=1e-5, atol=1e-6)
    assert opt.state[table.weight]["row_step"].tolist() == [12, 4, 0, 0, 1, 0]


def test_sparse_adam_overshoots_where_row_adam_does_not():
    """Why RowAdam exists: a row touched once every 50 steps moves lr per touch from RowAdam (constant
    gradient) but several times lr from SparseAdam, whose bias correction counts every step."""
    moved = {}
    for name, cls in (("row", RowAdam), ("sparse", torch.optim.SparseAdam)):
        table = nn.Embedding(50, 1, sparse=True)
        nn.init.zeros_(table.weight)
        opt = cls(table.parameters(), lr=0.01)
        for t in range(1500):  # row 0 every 50 steps (30 touches), a neighbour row every step
            ids = torch.tensor([0 if t % 50 == 0 else 1 + t % 49])
            opt.zero_grad()
            table(ids).sum().backward()  # gradient 1 on the touched row
            opt.step()
        moved[name] = -float(table.weight.detach()[0])
    assert moved["row"] == pytest.approx(30 * 0.01, rel=1e-3)
    assert moved["sparse"] > 3 * moved["row"]


def test_a_reloaded_optimizer_continues_exactly():
    def run(steps: int, table: nn.Embedding, opt: RowAdam) -> None:
        for t in range(steps):
            opt.zero_grad()
            table(torch.tensor([t % 3, 4])).pow(2).sum().backward()
            opt.step()

    torch.manual_seed(0)
    a = nn.Embedding(5, 2, sparse=True)
    b = nn.Embedding(5, 2, sparse=True)
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = RowAdam(a.parameters(), lr=0.1), RowAdam(b.parameters(), lr=0.1)
    run(4, a, opt_a)
    run(4, b, opt_b)
    saved = opt_b.state_dict()
    opt_b = RowAdam(b.parameters(), lr=0.1)
    opt_b.load_state_dict(saved)
    assert opt_b.state[b.weight]["row_step"].dtype == torch.int64
    run(5, a, opt_a)
    run(5, b, opt_b)
    assert torch.equal(a.weight, b.weight)


def test_dense_gradients_are_refused():
    p = nn.Parameter(torch.zeros(3, 2))
    p.grad = torch.ones(3, 2)
    with pytest.raises(UserError, match="sparse"):
        RowAdam([p]).step()
