"""Real Lightning runs: memorisation learns, LoRA keeps the backbone bit-identical, resume replays exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import QUICK_MODEL, quick_trainer

from decoding.models import load_causal_lm
from memexp.module import FactTuning
from memexp.recall import answer_stats


def test_full_finetuning_reaches_zero_hallucination(small_facts, tmp_path):
    module, dm = small_facts("full", n=12, lr=3e-3)
    trainer = quick_trainer(tmp_path, max_epochs=40, check_val_every_n_epoch=10)
    trainer.validate(module, datamodule=dm, verbose=False)
    assert trainer.callback_metrics["val/hallucination_rate"] == 1.0
    trainer.fit(module, datamodule=dm)
    metrics = trainer.callback_metrics
    assert metrics["val/hallucination_rate"] == 0.0
    assert metrics["val/answer_nll"] < 0.1
    assert set(module.fact_records["fact_id"].tolist()) == {f.id for f in dm.facts}


def test_recall_matches_hf_greedy_generation(small_facts, tmp_path):
    """Teacher-forced exact match == HF generate(do_sample=False), fact by fact, on a half-trained model."""
    module, dm = small_facts("full", n=12, lr=3e-3)
    quick_trainer(tmp_path, max_epochs=20, check_val_every_n_epoch=100).fit(module, datamodule=dm)
    module.eval()
    batch = next(iter(dm.val_dataloader()[0]))
    exact = answer_stats(module(batch), batch["labels"]).exact
    assert 0 < int(exact.sum()) < len(exact), "need a mix of recalled and not recalled facts"
    tok = dm.tokenizer
    for row, ex in enumerate(dm.train_examples):
        prompt = torch.tensor([ex.prompt_ids])
        out = module.model.generate(
            prompt,
            attention_mask=torch.ones_like(prompt),
            do_sample=False,
            max_new_tokens=len(ex.answer_ids),
            pad_token_id=tok.pad_token_id,
            eos_token_id=tok.eos_token_id,
        )
        generated = out[0, prompt.shape[1] :].tolist()
        assert (generated == ex.answer_ids) == bool(exact[row]), row


def test_lora_keeps_backbone_bit_identical(small_facts, tmp_path):
    module, dm = small_facts("lora", n=8, lr=1e-2, lora_r=4)
    lora_before = {n: p.detach().clone() for n, p in module.named_parameters() if "lora_B" in n}
    quick_trainer(tmp_path, max_epochs=3).fit(module, datamodule=dm)
    fresh = load_causal_lm(QUICK_MODEL).state_dict()
    base = module.model.get_base_model().state_dict()
    backbone = {k.replace(".base_layer", ""): v for k, v in base.items() if "lora_" not in k}
    assert set(backbone) == set(fresh)
    for name, weight in fresh.items():
        assert torch.equal(backbone[name], weight), name
    assert any(not torch.equal(p, lora_before[n]) for n, p in module.named_parameters() if "lora_B" in n)


def test_lora_target_that_does_not_exist_lists_candidates():
    with pytest.raises(ValueError, match=r"\['nope'\] match no linear layer.*'down_proj'.*'q_proj'"):
        FactTuning(backbone=QUICK_MODEL, method="lora", lora_targets=["q_proj", "nope"])
    with pytest.raises(ValueError, match="lora_r must be > 0"):
        FactTuning(backbone=QUICK_MODEL, method="lora", lora_r=0)


def test_tokenizer_that_does_not_fit_the_model_is_refused(small_facts, tmp_path):
    module = FactTuning(backbone="tiny:llama?hidden=64&layers=2&vocab=300", method="full")
    _, dm = small_facts("full", n=4)
    with pytest.raises(ValueError, match="tokenizer has 512 ids but the model's embedding has only 300 rows"):
        quick_trainer(tmp_path, max_epochs=1).fit(module, datamodule=dm)


class _Crash(Exception):
    pass


class _CrashAtEpoch(__import__("lightning").Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            raise _Crash


@pytest.mark.parametrize("method", ["full", "lora"])
def test_resume_after_crash_reproduces_uninterrupted_run(small_facts, tmp_path, method):
    from lightning.pytorch.callbacks import ModelCheckpoint

    def run(root, crash_at=None, ckpt_path=None):
        module, dm = small_facts(method, n=8, lr=5e-3, lora_dropout=0.1 if method == "lora" else 0.0)
        callbacks = [ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)]
        if crash_at is not None:
            callbacks.append(_CrashAtEpoch(crash_at))
        trainer = quick_trainer(root, max_epochs=4, callbacks=callbacks)
        trainer.fit(module, datamodule=dm, ckpt_path=ckpt_path)
        return module, trainer

    straight, straight_trainer = run(tmp_path / "a")
    with pytest.raises(_Crash):
        run(tmp_path / "b", crash_at=2)
    resumed, resumed_trainer = run(
        tmp_path / "b", ckpt_path=str(tmp_path / "b" / "checkpoints" / "last.ckpt")
    )
    assert resumed_trainer.global_step == straight_trainer.global_step
    for (name, p), q in zip(straight.named_parameters(), resumed.parameters()):
        assert torch.equal(p, q), name
    assert torch.equal(straight.fact_records["nll"], resumed.fact_records["nll"])
