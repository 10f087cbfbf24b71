"""Router: search without grad + differentiable re-scoring == an independent dense computation."""

from __future__ import annotations

import torch

from memexp.mome.router import Router, collision_stats, masked_mean, query_decorrelation_loss


def make_router(**kw):
    torch.manual_seed(0)
    args = dict(hidden_size=12, num_experts=40, k=4, key_dim=8, balance="none")
    args.update(kw)
    return Router(**args)


def test_selection_and_weights_equal_dense_softmax_over_top_k():
    router = make_router()
    hidden = torch.randn(3, 5, 12)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    out = router(hidden, mask)
    pooled = torch.stack([hidden[b][mask[b]].mean(0) for b in range(3)])  # oracle pooling
    q = pooled @ router.query.weight.t() + router.query.bias  # (3, 8)
    scores = q @ router.keys.weight.t()  # (3, 40) all experts, dense
    top = scores.topk(4, dim=1)
    assert torch.equal(out.ids, top.indices)
    torch.testing.assert_close(out.weights, top.values.softmax(-1), rtol=1e-5, atol=1e-6)


def test_gradients_reach_query_and_only_selected_keys():
    router = make_router()
    out = router(torch.randn(2, 3, 12))
    (out.weights * torch.randn_like(out.weights)).sum().backward()
    assert router.query.weight.grad.abs().sum() > 0
    grad = router.keys.weight.grad.coalesce()
    assert sorted(set(grad.indices()[0].tolist())) == sorted(set(out.ids.flatten().tolist()))


def test_routing_ignores_tokens_outside_the_question():
    router = make_router()
    hidden = torch.randn(2, 6, 12)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[:, :3] = True
    other = hidden.clone()
    other[:, 3:] = torch.randn(2, 3, 12)  # answer tokens change
    a, b = router(hidden, mask), router(other, mask)
    assert torch.equal(a.ids, b.ids) and torch.equal(a.weights, b.weights)


def test_multi_head_selects_heads_times_k_and_weights_sum_to_one():
    router = make_router(heads=3)
    hidden = torch.randn(4, 2, 12)
    out = router(hidden)
    assert out.ids.shape == (4, 12)
    torch.testing.assert_close(out.weights.sum(-1), torch.ones(4))
    q = (hidden.mean(1) @ router.query.weight.t() + router.query.bias).view(4, 3, 8)  # (B, heads, d_k)
    for h in range(3):  # head h selects by its own slice of the query
        top = (q[:, h] @ router.keys.weight.t()).topk(4, dim=-1)
        assert torch.equal(out.ids[:, 4 * h : 4 * h + 4], top.indices)
        torch.testing.assert_close(out.weights[:, 4 * h : 4 * h + 4], top.values.softmax(-1) / 3)


def test_per_token_routing_shapes_and_equivalence():
    router = make_router(per_token=True)
    hidden = torch.randn(2, 3, 12)
    out = router(hidden)
    assert out.ids.shape == (2, 3, 4)
    q = hidden @ router.query.weight.t() + router.query.bias  # (2, 3, 8)
    assert torch.equal(out.ids, (q @ router.keys.weight.t()).topk(4, dim=-1).indices)


def test_batchnorm_balance_handles_a_single_input():
    router = make_router(balance="batchnorm")
    router.train()
    one = router(torch.randn(1, 4, 12))
    assert one.ids.shape == (1, 4)
    batch = router(torch.randn(8, 4, 12))
    q = batch.queries.reshape(8, -1)
    torch.testing.assert_close(q.mean(0), torch.zeros(8), atol=1e-5, rtol=0)  # normalised over the batch


def test_query_decorrelation_loss_by_loop():
    q = torch.randn(5, 7)
    ref, pairs = 0.0, 0
    for i in range(5):
        for j in range(5):
            if i != j:
                ref += float(torch.cosine_similarity(q[i], q[j], dim=0)) ** 2
                pairs += 1
    assert abs(float(query_decorrelation_loss(q)) - ref / pairs) < 1e-5
    router = make_router(aux_weight=0.5).train()
    out = router(torch.randn(4, 3, 12))
    assert out.aux_loss.requires_grad and out.aux_loss.item() > 0


def test_collision_stats_by_hand():
    ids = torch.tensor([[0, 1], [1, 2], [3, 3], [4, 5]])
    stats = collision_stats(ids, num_experts=8)
    assert stats["collision_rate"] == 0.5  # facts 0 and 1 share expert 1; fact 2 only repeats its own
    assert stats["distinct_experts"] == 6
    assert stats["max_usage"] == 2
    assert stats["usage"].tolist() == [1, 2, 1, 1, 1, 1, 0, 0]


def test_masked_mean_matches_loop():
    h = torch.randn(2, 4, 3)
    m = torch.tensor([[1, 0, 1, 0], [0, 0, 0, 1]], dtype=torch.bool)
    torch.testing.assert_close(masked_mean(h, m), torch.stack([h[0, [0, 2]].mean(0), h[1, 3]]))


def test_phase2_calibration_whitens_the_queries_and_sets_exact_norm_statistics():
    router = make_router(balance="batchnorm")
    g = torch.Generator().manual_seed(2)
    features = torch.randn(64, 12, generator=g) @ torch.randn(12, 12, generator=g) + 3.0  # correlated
    pooled_again = router(features[:, None, :]).features  # one-token "questions": the router's own pooling
    assert torch.equal(pooled_again, features)
    batches = [features[:40], features[40:]]  # as phase 2 reads them: one eval batch after another
    router.whiten(batches)
    q = router.query(features).double()  # (64, 8)
    cov = torch.cov(q.T, correction=0)
    torch.testing.assert_close(cov, torch.eye(8, dtype=torch.float64), atol=1e-3, rtol=0)
    router.calibrate_norm([features])  # one batch: the exact statistics
    torch.testing.assert_close(router.norm.running_mean.double(), q.mean(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(router.norm.running_var.double(), q.var(0), atol=1e-4, rtol=1e-4)
    router.calibrate_norm(batches)  # several: the average of the per-batch statistics
    parts = [q[:40], q[40:]]
    torch.testing.assert_close(router.norm.running_mean.double(), sum(p.mean(0) for p in parts) / 2)
    torch.testing.assert_close(router.norm.running_var.double(), sum(p.var(0) for p in parts) / 2)
    router.eval()  # the frozen router routes stored features exactly as it routes hidden states
    hidden, mask = torch.randn(3, 5, 12), torch.rand(3, 5) > 0.3
    mask[:, 0] = True
    a, b = router(hidden, mask), router.route_features(masked_mean(hidden, mask))
    assert torch.equal(a.ids, b.ids) and torch.equal(a.weights, b.weights)
