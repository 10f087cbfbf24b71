"""Frozen-layer cache == the full forward: same logits, losses and trained weights; stale caches refused."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from decoding.errors import UserError
from decoding.models import load_causal_lm
from memexp.answer_logits import answer_positions, answer_token_nll, summed_answer_nll
from memexp.data import IGNORE_INDEX, FactsDataModule
from memexp.layer_cache import LayerCache, cache_fingerprint, decoder_parts, head_at, run_layers
from memexp.mome import MoMEConfig
from memexp.mome.index import IndexConfig
from memexp.mome.tuning import MoMETuning

LLAMA4 = "tiny:llama?layers=4"


def facts_data(tokenizer: str = LLAMA4, n: int = 10, seed: int = 0) -> FactsDataModule:
    data = FactsDataModule(
        tokenizer=tokenizer,
        num_random_facts=n,
        num_heldout=2,
        batch_size=4,
        eval_batch_size=4,
        answer_min_len=3,
        answer_max_len=8,  # rows of different lengths: right padding in every batch
        seed=seed,
    )
    data.setup("fit")
    return data


def batches(data: FactsDataModule) -> list[dict[str, torch.Tensor]]:
    return list(data.train_dataloader())


def full_summed_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The plain version: log-softmax at every position, answer tokens summed per row."""
    logits, targets = logits[:, :-1].float(), labels[:, 1:]
    token = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp_min(0), reduction="none")
    return (token * (targets != IGNORE_INDEX)).sum(1)


def upper_logits(parts, upper: torch.Tensor) -> torch.Tensor:
    return head_at(parts, upper, torch.ones(upper.shape[:2], dtype=torch.bool))


def test_upper_layers_from_the_cache_reproduce_the_full_forward():
    model = load_causal_lm(LLAMA4).eval()
    data = facts_data()
    parts = decoder_parts(model)
    with torch.no_grad():
        cache = LayerCache.build(model, data.train_dataloader(), cut=2)
        for batch in batches(data):
            attn = batch["attention_mask"]
            assert (attn == 0).any()  # the batches are padded
            full = model(input_ids=batch["input_ids"], attention_mask=attn).logits  # (B, T, V)
            hidden = cache.lookup(batch["fact_ids"], batch["input_ids"].shape[1])
            upper = run_layers(parts, hidden, attn, 2, 4)
            real = attn.bool()
            torch.testing.assert_close(head_at(parts, upper, real), full[real], atol=1e-5, rtol=1e-5)
            n = int(attn[0].sum())  # one fact alone: no padding (HF may skip the mask: is_causal)
            alone = model(input_ids=batch["input_ids"][:1, :n]).logits[0]  # (n, V)
            upper = run_layers(parts, cache.lookup(batch["fact_ids"][:1], n), attn[:1, :n], 2, 4)
            torch.testing.assert_close(upper_logits(parts, upper), alone, atol=1e-5, rtol=1e-5)


def test_answer_positions_only_give_the_full_loss():
    model = load_causal_lm(LLAMA4).eval()
    for batch in batches(facts_data()):
        ids, attn, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        keep = answer_positions(labels)
        assert keep.sum() == (labels != IGNORE_INDEX).sum() and keep.sum() < keep.numel() / 2
        with torch.no_grad():
            full = model(input_ids=ids, attention_mask=attn, labels=labels)
            kept = model(input_ids=ids, attention_mask=attn, logits_to_keep=keep).logits  # (N, V)
        assert kept.shape == (int(keep.sum()), full.logits.shape[-1])
        torch.testing.assert_close(answer_token_nll(kept, labels, keep).mean(), full.loss, atol=1e-5, rtol=0)
        torch.testing.assert_close(
            summed_answer_nll(kept, labels, keep), full_summed_nll(full.logits, labels), atol=1e-5, rtol=0
        )


class StepLosses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def train(cache: bool, query_layer: int, tmp_path, epochs: int = 3, **kw) -> tuple[MoMETuning, list[float]]:
    torch.manual_seed(0)
    config = MoMEConfig(
        num_experts=128,
        k=4,
        rank=4,
        scale=4.0,
        sites=["*.layers.[23].mlp.*_proj", "*.layers.[23].self_attn.v_proj"],
        query_layer=query_layer,
        key_dim=16,
        aux_weight=0.1,
        index=IndexConfig(kind="exact"),
    )
    module = MoMETuning(
        backbone=LLAMA4, mome=config, phase1_epochs=1, lr=3e-2, cache_frozen_layers=cache, **kw
    )
    losses = StepLosses()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        callbacks=[losses],
    )
    trainer.fit(module, facts_data())
    return module, losses.losses


@pytest.mark.parametrize("query_layer", [1, 2], ids=["query-below-cut", "query-at-cut"])
def test_cached_training_equals_uncached(tmp_path, query_layer):
    plain, plain_losses = train(False, query_layer, tmp_path / "plain")
    cached, cached_losses = train(True, query_layer, tmp_path / "cached")
    assert cached.layer_cache is not None and cached.layer_cache.cut == 2
    assert (cached.layer_cache.features is not None) == (query_layer < 2)
    assert len(plain_losses) == len(cached_losses) >= 6  # phase 1 and phase 2 steps
    torch.testing.assert_close(torch.tensor(cached_losses), torch.tensor(plain_losses), atol=1e-5, rtol=0)
    trained = dict(plain.model.named_parameters())
    moved = 0
    for name, p in cached.model.named_parameters():
        if p.requires_grad or name.startswith("router."):
            torch.testing.assert_close(p, trained[name], atol=1e-5, rtol=1e-4, msg=name)
            moved += name.endswith("B.weight") and bool(p.abs().sum() > 0)
    assert moved > 0  # the experts trained
    assert torch.equal(cached.cached_ids, plain.cached_ids)


def test_cache_on_disk_is_reused_and_checked(tmp_path):
    folder = tmp_path / "layer_cache"
    first, _ = train(True, 1, tmp_path / "a", epochs=1, layer_cache_dir=str(folder))
    files = list(folder.iterdir())
    assert len(files) == 1 and first.layer_cache.fingerprint in files[0].name
    again = LayerCache.load(files[0], first.layer_cache.fingerprint)
    assert torch.equal(again.states, first.layer_cache.states)
    assert torch.equal(again.features, first.layer_cache.features)
    assert LayerCache.load(files[0], "0" * 32) is None  # another fingerprint: never reused


def facts_of(data: FactsDataModule) -> list[tuple[int, list[int]]]:
    return [(e.fact_id, e.prompt_ids + e.answer_ids) for e in data.train_examples]


def test_fingerprint_follows_backbone_facts_and_tokenizer():
    model = load_causal_lm(LLAMA4)
    facts = facts_of(facts_data())
    base = cache_fingerprint(model, 2, facts)
    assert cache_fingerprint(model, 2, list(reversed(facts))) == base  # order does not matter
    assert cache_fingerprint(model, 3, facts) != base
    other_facts = facts_of(facts_data(seed=1))
    assert other_facts != facts and cache_fingerprint(model, 2, other_facts) != base
    other_tok = facts_of(facts_data(tokenizer="tiny:llama?layers=4&vocab=300"))
    assert other_tok != facts and cache_fingerprint(model, 2, other_tok) != base
    with torch.no_grad():
        model.model.layers[3].mlp.down_proj.weight.add_(1.0)  # above the cut: the cache stays valid
        assert cache_fingerprint(model, 2, facts) == base
        model.model.layers[1].mlp.down_proj.weight.view(-1)[0] += 1e-3  # below the cut: stale
        assert cache_fingerprint(model, 2, facts) != base


def test_other_architectures_are_refused(tiny_gpt2_dir):
    with pytest.raises(UserError, match="Llama-family"):
        decoder_parts(load_causal_lm(tiny_gpt2_dir))


class CompareEvaluations(L.Callback):
    """At each validation of the fit: every val batch through the cache and through the full forward."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, bool, dict, dict]] = []
        self.logits: list[tuple[torch.Tensor, torch.Tensor]] = []

    def on_validation_epoch_end(self, trainer, module) -> None:
        from memexp.fact_tuning import FactTuning

        for idx, loader in enumerate(trainer.datamodule.val_dataloader()):
            for batch in loader:
                used = module._cache_evaluates(batch)
                cached = module.evaluate(batch, None)
                full = FactTuning.evaluate(module, batch, None)  # evaluate_batch on the routed model
                self.seen.append((idx, module.current_epoch, used, cached, full))
                if used:  # the answer logits themselves, (N, V) each
                    keep = answer_positions(batch["labels"])
                    routed = module.model(
                        batch["input_ids"], batch["attention_mask"], question_mask=batch["prompt_mask"]
                    ).logits[keep]
                    self.logits.append((module._cached_forward(batch, {}, keep), routed))


@pytest.mark.parametrize("query_layer", [1, 2], ids=["query-below-cut", "query-at-cut"])
def test_cached_validation_equals_the_full_forward(tmp_path, query_layer):
    """Validation through the cache gives the full model's answer logits and per-fact columns, routed by
    the real router and index with the fact gate; held-out facts (not cached) take the full forward."""
    compare = CompareEvaluations()
    config = MoMEConfig(
        num_experts=128, k=4, rank=4, scale=4.0, query_layer=query_layer, key_dim=16, gate=0.5,
        sites=["*.layers.[23].mlp.*_proj", "*.layers.[23].self_attn.v_proj"], index=IndexConfig(kind="flat"),
    )  # fmt: skip
    module = MoMETuning(backbone=LLAMA4, mome=config, phase1_epochs=1, lr=5e-2, balance_keys=True)
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        default_root_dir=str(tmp_path), callbacks=[compare],
    )  # fmt: skip
    trainer.fit(module, facts_data())
    assert {epoch for _, epoch, *_ in compare.seen} == {0, 1, 2}  # phase 1 and phase 2
    assert {(idx, used) for idx, _, used, *_ in compare.seen} == {(0, True), (1, False)}
    for _, _, _, cached, full in compare.seen:
        assert torch.equal(cached["fact_id"], full["fact_id"])
        for name in ("exact", "answer_exact", "num_tokens"):
            assert torch.equal(cached[name], full[name]), name
        for name in ("nll", "nll_sum", "max_tok_nll"):
            torch.testing.assert_close(cached[name], full[name], atol=1e-4, rtol=1e-4, msg=name)
    for cached, routed in compare.logits:
        torch.testing.assert_close(cached, routed, atol=1e-4, rtol=1e-4)
    per_epoch = len(compare.logits) // 3
    first, last = compare.logits[0][1], compare.logits[2 * per_epoch][1]  # one batch, epochs 0 and 2
    assert (last - first).abs().max() > 1e-3  # the experts changed the logits between validations
