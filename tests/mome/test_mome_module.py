"""MoMETuning under a real Lightning Trainer: two phases, frozen backbone, sparse updates, early stopping."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from decoding.errors import UserError
from decoding.models import load_causal_lm
from memexp.data import FactsDataModule
from memexp.mome import MoMEConfig
from memexp.mome.index import IndexConfig
from memexp.mome.tuning import MoMETuning


def make_config(**overrides) -> MoMEConfig:
    settings = dict(
        num_experts=256,
        k=4,
        rank=4,
        scale=4.0,
        sites=["*.layers.*_proj"],
        query_layer=0,
        key_dim=16,
        aux_weight=0.1,
        index=IndexConfig(kind="flat"),
    )
    return MoMEConfig(**{**settings, **overrides})


def make_module(backbone: str, **kw) -> MoMETuning:
    torch.manual_seed(0)
    args = dict(mome=make_config(), phase1_epochs=1, lr=3e-2)
    args.update(kw)
    return MoMETuning(backbone=backbone, **args)


def make_data(backbone: str, n: int = 12) -> FactsDataModule:
    return FactsDataModule(
        tokenizer=backbone,
        num_random_facts=n,
        num_heldout=2,
        batch_size=4,
        answer_min_len=4,
        answer_max_len=6,
        seed=0,
    )


class Snapshots(L.Callback):
    """Copies of the trainable state at the end of every epoch."""

    def __init__(self) -> None:
        self.epochs: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer, module) -> None:
        self.epochs.append(
            {
                n: p.detach().clone()
                for n, p in module.model.named_parameters()
                if p.requires_grad or n.startswith("router.")
            }
        )


def fit(module, data, epochs: int, tmp_path, val_every: int = 1, callbacks=()) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        check_val_every_n_epoch=val_every,
        num_sanity_val_steps=0,
        default_root_dir=str(tmp_path),
        callbacks=list(callbacks),
    )
    trainer.fit(module, data)
    return trainer


@pytest.mark.parametrize("optimizer", ["sparse_adam", "row_adam"])
def test_two_phase_training(tiny_llama_dir, tmp_path, optimizer):
    module, data, snaps = (
        make_module(tiny_llama_dir, optimizer=optimizer),
        make_data(tiny_llama_dir),
        Snapshots(),
    )
    initial = {n: p.detach().clone() for n, p in module.model.router.named_parameters()}
    fit(module, data, epochs=3, tmp_path=tmp_path, val_every=3, callbacks=[snaps])
    mome = module.model
    # the backbone is bit-identical to a fresh copy
    fresh = dict(load_causal_lm(tiny_llama_dir).named_parameters())
    for name, p in mome.backbone.named_parameters():
        if not name.endswith((".A.weight", ".B.weight")):
            assert torch.equal(p, fresh[name.replace(".base.", ".")]), name
    # phase 1 moved the router; phase 2 (epochs 2, 3) did not train it (the query projection only
    # took the whitening folded in at phase-2 start, the keys only the placement of balance_keys)
    after1, after2, after3 = snaps.epochs
    assert not torch.equal(initial["query.weight"], after1["router.query.weight"])
    assert not torch.equal(initial["keys.weight"], after1["router.keys.weight"])
    for name in ("router.query.weight", "router.query.bias", "router.keys.weight"):
        assert torch.equal(after2[name], after3[name]), name
    # phase 2 changed only the cached experts' rows
    fact_ids = torch.tensor([e.fact_id for e in data.train_examples])
    selected = torch.unique(module.cached_ids[fact_ids])
    for name, site in mome.sites.items():
        key = f"backbone.{name}.B.weight"
        changed = (after1[key] != after3[key]).any(1).nonzero().flatten()
        assert changed.numel() > 0
        assert set(changed.tolist()) <= set(selected.tolist()), name
    # the cache equals what the frozen router selects now (cached == recomputed)
    batch = next(module._fact_batches(data.train_examples))
    routing = mome.route(batch["input_ids"], batch["attention_mask"], batch["prompt_mask"])
    assert torch.equal(routing.ids, module.cached_ids[batch["fact_ids"]])
    torch.testing.assert_close(routing.weights, module.cached_weights[batch["fact_ids"]])
    module.export_pretrained(tmp_path / "mome")  # the CLI's ResultsWriter does this at the end of fit
    assert (tmp_path / "mome" / "manifest.json").exists()


def test_training_lowers_the_answer_nll(tiny_llama_dir, tmp_path):
    module, data = make_module(tiny_llama_dir, lr=3e-2), make_data(tiny_llama_dir, n=8)
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False
    )
    before = trainer.validate(module, data, verbose=False)[0]["val/answer_nll"]
    fit(module, data, epochs=16, tmp_path=tmp_path, val_every=16)
    after = module.fact_records["nll"].mean().item()  # the final validation of fit
    print(f"answer nll {before:.3f} -> {after:.3f}")
    # nats per answer token (a random tiny backbone learns slowly): 16 epochs give 2-3x this margin on the
    # AVX512, AVX2 and unvectorised CPU paths (8 epochs gave 0.28 on the unvectorised one)
    assert after < before - 0.3


@pytest.mark.parametrize("optimizer", ["adamw", "adafactor"])
def test_dense_optimisers_train_experts_only(tiny_llama_dir, tmp_path, optimizer):
    module, snaps = make_module(tiny_llama_dir, optimizer=optimizer), Snapshots()
    fit(module, make_data(tiny_llama_dir, n=4), epochs=2, tmp_path=tmp_path, val_every=5, callbacks=[snaps])
    site = next(iter(module.model.sites))
    assert not module.model.sites[site].B.sparse  # dense optimisers get dense gradients
    assert not torch.equal(
        snaps.epochs[0][f"backbone.{site}.B.weight"], snaps.epochs[1][f"backbone.{site}.B.weight"]
    )


def test_memorised_facts_leave_training_and_return_when_not_recalled(tiny_llama_dir, tmp_path):
    module, snaps = make_module(tiny_llama_dir, stop_nll=1e9), Snapshots()  # every fact counts as memorised
    data = make_data(tiny_llama_dir, n=8)
    fit(module, data, epochs=3, tmp_path=tmp_path, val_every=10, callbacks=[snaps])
    fact_ids = torch.tensor([e.fact_id for e in data.train_examples])
    assert module.memorised[fact_ids].all()
    for name, value in snaps.epochs[1].items():  # epoch 3 trained nothing: all facts had left
        assert torch.equal(value, snaps.epochs[2][name]), name
    L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False).validate(
        module, data, verbose=False
    )
    exact = module.fact_records["exact"]
    assert torch.equal(module.memorised[module.fact_records["fact_id"]], exact)  # the missed ones came back
    assert not exact.all()


class LeaveAlone(L.Callback):
    """From epoch ``epoch`` on, every training fact but ``fact_id`` counts as memorised."""

    def __init__(self, fact_id: int, epoch: int) -> None:
        self.fact_id, self.epoch = fact_id, epoch

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == self.epoch:
            module.memorised[:] = True
            module.memorised[self.fact_id] = False


def test_a_facts_experts_train_the_same_whatever_its_batch_mates_do(tiny_llama_dir, tmp_path):
    """With row_adam and the loss per answer token of the whole batch, a fact's own experts follow the same
    trajectory whether its batch-mates keep training or are memorised and leave: no jolt when the active
    set shrinks (torch's SparseAdam counts the skipped steps, and a per-active-token loss grows)."""
    rows = {}
    for alone in (False, True):
        module = make_module(tiny_llama_dir, optimizer="row_adam", stop_nll=0.0, balance_keys=True)
        data, fact_id = make_data(tiny_llama_dir, n=8), 0
        callbacks = [LeaveAlone(fact_id, epoch=2)] if alone else []
        fit(module, data, epochs=4, tmp_path=tmp_path / str(alone), val_every=10, callbacks=callbacks)
        others = [e.fact_id for e in data.train_examples if e.fact_id != fact_id]
        assert len(others) == len(data.train_examples) - 1
        own = module.cached_ids[fact_id]  # (k,) the fact's experts, its own (balance_keys, 256 >> 8 x 4)
        assert not torch.isin(own, module.cached_ids[others]).any()
        rows[alone] = {n: s.B.weight[own].detach().clone() for n, s in module.model.sites.items()}
    for name, value in rows[False].items():
        torch.testing.assert_close(rows[True][name], value, rtol=1e-5, atol=1e-7, msg=name)


def test_bad_settings(tiny_llama_dir):
    with pytest.raises(ValueError, match="'sgd'"):
        make_module(tiny_llama_dir, optimizer="sgd")
    with pytest.raises(ValueError, match="k=300"):
        make_module(tiny_llama_dir, mome=MoMEConfig(num_experts=256, k=300))


@pytest.mark.parametrize("optimizer", ["sparse_adam", "row_adam"])
def test_resume_in_phase2_continues_from_the_cache(tiny_llama_dir, tmp_path, optimizer):
    from lightning.pytorch.callbacks import ModelCheckpoint

    data = make_data(tiny_llama_dir, n=8)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=10,
        callbacks=[ckpt],
        default_root_dir=str(tmp_path),
    )
    first = make_module(tiny_llama_dir, optimizer=optimizer)
    trainer.fit(first, data)
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)["state_dict"]
    assert not any(".base." in k or "embed_tokens" in k for k in state)  # the backbone is not copied
    resumed = make_module(tiny_llama_dir, optimizer=optimizer)
    again = L.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=10,
        enable_checkpointing=False,
        default_root_dir=str(tmp_path / "b"),
    )
    again.fit(resumed, data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert torch.equal(resumed.cached_ids, first.cached_ids)
    assert not any(p.requires_grad for p in resumed.model.router.parameters())
    tables = resumed.optimizers()[0].optimizer if optimizer == "row_adam" else None
    if tables is not None:  # the per-row step counts came back as counts
        steps = [s["row_step"] for s in tables.state.values()]
        assert steps and all(s.dtype == torch.int64 and s.max() >= 2 for s in steps)


def pre_norm_queries(module: MoMETuning, examples) -> torch.Tensor:
    """``(N, D)`` query-projection outputs of all facts, before batch-norm (recomputed independently)."""
    from memexp.mome.router import masked_mean

    router, out = module.model.router, []
    handle = router.register_forward_pre_hook(lambda m, a: out.append(router.query(masked_mean(a[0], a[1]))))
    with torch.no_grad():
        for batch in module._fact_batches(examples):
            module.model.route(batch["input_ids"], batch["attention_mask"], batch["prompt_mask"])
    handle.remove()
    return torch.cat(out)


@pytest.mark.parametrize("whiten", [True, False])
def test_phase2_whitens_the_facts_queries(tiny_llama_dir, tmp_path, whiten):
    cfg = MoMEConfig(
        num_experts=512, k=4, rank=1, sites=["model.layers.1.mlp.down_proj"], query_layer=1, key_dim=4
    )
    module = make_module(tiny_llama_dir, mome=cfg, phase1_epochs=0, whiten_queries=whiten)
    data = make_data(tiny_llama_dir, n=24)
    fit(module, data, epochs=1, tmp_path=tmp_path, val_every=5)
    q = pre_norm_queries(module, data.train_examples).double()  # (24, 4)
    cov = torch.cov(q.T, correction=0)
    if whiten:  # white over the facts: zero mean, identity covariance (up to the eps ridge)
        torch.testing.assert_close(q.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-4, rtol=0)
        torch.testing.assert_close(cov, torch.eye(4, dtype=torch.float64), atol=2e-3, rtol=0)
    else:  # the raw projection of pooled questions is far from white
        assert (cov - torch.eye(4, dtype=torch.float64)).abs().max() > 0.1


def test_question_end_is_recorded_from_the_facts_or_checked(tiny_llama_dir):
    module, data = make_module(tiny_llama_dir), make_data(tiny_llama_dir)
    quiet = dict(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    L.Trainer(**quiet).validate(module, data, verbose=False)
    end = module.model.config.question_end
    assert end and all(e.prompt_ids[-len(end) :] == end for e in data.train_examples)
    assert module.hparams.mome.question_end is None  # the user's settings stay as given
    batch = next(module._fact_batches(data.train_examples))
    mome = module.model.eval()
    ids, attn = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        want = mome(ids, attention_mask=attn, question_mask=batch["prompt_mask"])
        got = mome(ids, attention_mask=attn)  # prompt + answer, no question mask
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
    wrong = make_module(tiny_llama_dir, mome=make_config(question_end=[end[-1] + 1]))
    with pytest.raises(UserError, match=r"mome.question_end=\[\d+\] does not end every training prompt"):
        L.Trainer(**quiet).validate(wrong, data, verbose=False)
