"""Shrunk whitening of the router's queries (``Router.whiten(shrink=)``, ``MoMETuning(whiten_shrink=)``)."""

import pytest
import torch

from decoding.errors import UserError
from memexp.mome.router import Router
from memexp.mome.tuning import MoMETuning


def plain_whiten(
    router: Router, features: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """The phase-2 whitening as it was before ``shrink`` (reference for the equivalence test)."""
    q = router.query(features).float()
    w, b = router.query.weight.float(), router.query.bias.float()
    mu = q.mean(0)
    cov = torch.cov(q.T, correction=0).double()
    ridge = eps * cov.diagonal().mean().clamp_min(1e-30)
    evals, evecs = torch.linalg.eigh(cov)
    s = (evecs @ torch.diag((evals.clamp_min(0) + ridge).rsqrt()) @ evecs.T).float()
    return s @ w, s @ (b - mu)


def facts_and_paraphrases(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """40 facts spread over 4 strong directions (std 10), nearly constant in 12 weak ones (std 0.01);
    each paraphrase moves its fact by 0.2 along the weak directions only (where rewordings differ)."""
    g = torch.Generator().manual_seed(seed)
    facts = torch.cat([10 * torch.randn(40, 4, generator=g), 0.01 * torch.randn(40, 12, generator=g)], 1)
    noise = torch.cat([torch.zeros(40, 4), 0.2 * torch.randn(40, 12, generator=g)], 1)
    return facts, facts + noise  # (40, 16) each


def recall_at_1(router: Router, facts: torch.Tensor, paras: torch.Tensor) -> float:
    """Fraction of paraphrases whose nearest fact query (L2) is their own fact's."""
    with torch.no_grad():
        qf, qp = router.query(facts), router.query(paras)  # (40, 16) each
    return (torch.cdist(qp, qf).argmin(1) == torch.arange(len(facts))).float().mean().item()


def make_router(seed: int = 0) -> Router:
    torch.manual_seed(seed)
    return Router(hidden_size=16, num_experts=64, k=2, key_dim=16, sparse=False)


def test_shrink_zero_is_the_plain_whitening_bit_for_bit():
    facts, _ = facts_and_paraphrases()
    router = make_router()
    w, b = plain_whiten(router, facts)
    router.whiten([facts[:25], facts[25:]], shrink=0.0)
    assert torch.equal(router.query.weight, w) and torch.equal(router.query.bias, b)
    default = make_router()
    default.whiten([facts[:25], facts[25:]])
    assert torch.equal(default.query.weight, router.query.weight)


def test_shrunk_whitening_keeps_paraphrases_on_their_fact():
    facts, paras = facts_and_paraphrases()
    plain, shrunk = make_router(), make_router()
    plain.whiten([facts])
    shrunk.whiten([facts], shrink=0.1)
    assert recall_at_1(shrunk, facts, paras) >= 0.9
    assert recall_at_1(plain, facts, paras) <= 0.5  # the weak directions blown up to the facts' scale


def test_shrunk_whitening_still_centres_the_facts():
    facts, _ = facts_and_paraphrases()
    router = make_router()
    router.whiten([facts], shrink=0.1)
    with torch.no_grad():
        q = router.query(facts)
    assert q.mean(0).abs().max() < 1e-3


@pytest.mark.parametrize("shrink", [-0.1, float("nan"), float("inf")])
def test_bad_shrink_is_refused(shrink):
    facts, _ = facts_and_paraphrases()
    with pytest.raises(UserError, match="shrink"):
        make_router().whiten([facts], shrink=shrink)
    with pytest.raises(UserError, match="whiten_shrink"):
        MoMETuning(backbone="tiny:llama?hidden=64&layers=2", whiten_shrink=shrink)
