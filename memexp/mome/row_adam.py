"""``RowAdam``: Adam on the rows a sparse gradient touches, with a step count per row.

``torch.optim.SparseAdam`` keeps one step count per *tensor* and bias-corrects every row with it. An expert
row that is selected once per epoch (one fact, phase 2) has seen n updates while the tensor's count is
n x (steps per epoch), so its moments are far from warm while the correction assumes they are::

    m_n = (1 - b1^n) g,  v_n = (1 - b2^n) g^2     (constant gradient g, b1 = 0.9, b2 = 0.999)
    SparseAdam step  ~ lr * m_n / sqrt(v_n)  = lr * 6.5   at n = 10,  3.2 at n = 100,  2.0 at n = 300
    RowAdam step     ~ lr * (m_n / (1 - b1^n)) / sqrt(v_n / (1 - b2^n)) = lr

Measured on 1,000 SmolLM2 facts (benchmarks/RESULTS.md): with SparseAdam the facts' answer NLL first
*rises* for ~20 epochs, and facts that were recalled are lost again. RowAdam corrects row ``i`` with its own
count ``s_i``, so each row follows exactly the trajectory dense Adam would give it if it saw only its own
gradients (the oracle in ``tests/mome/test_row_adam.py``)::

    s_i += 1;  m_i = b1 m_i + (1 - b1) g_i;  v_i = b2 v_i + (1 - b2) g_i^2
    p_i -= lr / (1 - b1^s_i) * m_i / (sqrt(v_i) / sqrt(1 - b2^s_i) + eps)

Rows without a gradient keep their parameters and moments (lazy, like SparseAdam). State per parameter
``(R, ...)``: ``exp_avg`` and ``exp_avg_sq`` like the parameter, ``row_step`` ``(R,)`` int64.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from decoding.errors import UserError


class RowAdam(torch.optim.Optimizer):
    """Lazy Adam over sparse row gradients, bias-corrected per row.

    Args:
        params: parameters whose gradients are sparse along dim 0 (``nn.Embedding(sparse=True)``).
        lr: learning rate.
        betas: Adam's ``(b1, b2)``.
        eps: added to the corrected ``sqrt(v)``.
    """

    def __init__(
        self,
        params: Iterable[torch.nn.Parameter] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if not lr > 0 or not 0 <= betas[0] < 1 or not 0 <= betas[1] < 1 or not eps >= 0:
            raise UserError(f"RowAdam(lr={lr}, betas={betas}, eps={eps}): need lr > 0, 0 <= b < 1, eps >= 0")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    def load_state_dict(self, state_dict: dict) -> None:
        """As torch's, but the row step counts stay int64 (torch casts every non-``step`` state tensor of
        a floating parameter to the parameter's dtype)."""
        super().load_state_dict(state_dict)
        for state in self.state.values():
            if "row_step" in state:
                state["row_step"] = state["row_step"].round().long()

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One update of every row that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise UserError("RowAdam needs sparse gradients (nn.Embedding(sparse=True)); use AdamW")
                grad = p.grad.coalesce()
                rows, g = grad.indices()[0], grad.values().float()  # (n,), (n, ...)
                if rows.numel() == 0:
                    continue
                state = self.state[p]
                if not state:
                    state["row_step"] = torch.zeros(p.shape[0], dtype=torch.int64, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p)
                    state["exp_avg_sq"] = torch.zeros_like(p)
                state["row_step"][rows] += 1
                steps = state["row_step"][rows].double().view(-1, *([1] * (g.dim() - 1)))  # (n, 1, ...)
                m = state["exp_avg"][rows].float().mul_(b1).add_(g, alpha=1 - b1)
                v = state["exp_avg_sq"][rows].float().mul_(b2).addcmul_(g, g, value=1 - b2)
                state["exp_avg"][rows] = m.to(p.dtype)
                state["exp_avg_sq"][rows] = v.to(p.dtype)
                step_size = (group["lr"] / (1 - b1**steps)).float()  # (n, 1, ...)
                denom = (v.sqrt() / (1 - b2**steps).sqrt().float()).add_(group["eps"])
                p[rows] = (p[rows].float() - step_size * m / denom).to(p.dtype)
        return loss
