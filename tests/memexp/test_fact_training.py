"""Real Lightning runs: memorisation learns, LoRA keeps the backbone bit-identical, resume replays exactly."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping
from memexp_helpers import QUICK_MODEL, quick_trainer

from decoding.models import load_causal_lm
from memexp.fact_eval import fact_columns
from memexp.fact_tuning import FactTuning


def test_full_finetuning_reaches_zero_hallucination(small_facts, tmp_path):
    """Reaches 0% within a budget of about 4x what it needs here (37 epochs); the epoch is not asserted."""
    module, dm = small_facts("full", n=12, lr=3e-3)
    stop = EarlyStopping(monitor="val/hallucination_rate", mode="min", stopping_threshold=1e-6, patience=1000)
    trainer = quick_trainer(tmp_path, max_epochs=150, check_val_every_n_epoch=2, callbacks=[stop])
    trainer.validate(module, datamodule=dm, verbose=False)
    assert trainer.callback_metrics["val/hallucination_rate"] == 1.0
    nll_before = float(trainer.callback_metrics["val/answer_nll"])
    trainer.fit(module, datamodule=dm)
    metrics = trainer.callback_metrics
    assert metrics["val/hallucination_rate"] == 0.0
    assert trainer.current_epoch < 150, "stopped by reaching 0%, not by the budget"
    assert metrics["val/answer_nll"] < 0.1 * nll_before
    assert set(module.fact_records["fact_id"].tolist()) == {f.id for f in dm.facts}


def test_recall_matches_hf_greedy_generation(small_facts, tmp_path):
    """Teacher-forced exact match == HF generate(do_sample=False), fact by fact, on a half-trained model."""
    module, dm = small_facts("full", n=12, lr=3e-3)
    quick_trainer(tmp_path, max_epochs=20, check_val_every_n_epoch=100).fit(module, datamodule=dm)
    module.eval()
    batch = next(iter(dm.val_dataloader()[0]))
    exact = fact_columns(module(batch), batch["labels"])["exact"]
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
    with pytest.raises(ValueError, match="lora_r=0 must be an integer >= 1"):
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


def test_crash_while_writing_a_checkpoint_keeps_the_previous_one(small_facts, tmp_path, monkeypatch):
    """A write killed halfway (disk full, SIGKILL) never replaces a good last.ckpt with a partial one."""
    import fsspec.implementations.local as local
    from lightning.pytorch.callbacks import ModelCheckpoint

    module, dm = small_facts("full", n=8)
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    callback = ModelCheckpoint(dirpath=ckpt.parent, save_last=True)
    quick_trainer(tmp_path, max_epochs=1, callbacks=[callback]).fit(module, datamodule=dm)
    good, listing = ckpt.read_bytes(), sorted(ckpt.parent.iterdir())

    real_write = local.LocalFileOpener.write

    def write_half_then_die(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError("simulated crash while writing")

    monkeypatch.setattr(local.LocalFileOpener, "write", write_half_then_die)
    with pytest.raises(OSError, match="simulated crash"):
        quick_trainer(tmp_path, max_epochs=2, callbacks=[callback]).fit(
            module, datamodule=dm, ckpt_path=str(ckpt)
        )
    monkeypatch.undo()
    assert ckpt.read_bytes() == good
    assert sorted(ckpt.parent.iterdir()) == listing, "no partial files left behind"
    assert torch.load(ckpt, weights_only=True)["epoch"] == 0


@pytest.mark.parametrize("method", ["full", "lora"])
def test_exported_model_reloads_with_identical_logits(small_facts, tmp_path, method):
    from decoding.models import load_tokenizer

    module, dm = small_facts(method, n=8)
    quick_trainer(tmp_path, max_epochs=2).fit(module, datamodule=dm)
    out = module.export_pretrained(tmp_path / "model", dm.tokenizer)
    module.export_pretrained(tmp_path / "model", dm.tokenizer)  # a second export replaces the first
    assert (out / ("adapter_config.json" if method == "lora" else "config.json")).exists()
    reloaded = load_causal_lm(out).eval()
    batch = next(iter(dm.val_dataloader()[0]))
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(input_ids=batch["input_ids"]).logits, module.model(batch["input_ids"]).logits
        )
    assert load_tokenizer(out).get_vocab() == dm.tokenizer.get_vocab()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".model")) == []


def test_cosine_schedule_decays_to_a_tenth(small_facts, tmp_path):
    module, dm = small_facts("full", n=8, lr=2e-3, lr_schedule="cosine")
    trainer = quick_trainer(tmp_path, max_epochs=3)
    trainer.fit(module, datamodule=dm)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.global_step == 6
    assert scheduler.get_last_lr()[0] == pytest.approx(2e-4)
    assert [scheduler.lr_lambdas[0](s) for s in (0, 3)] == pytest.approx([1.0, 0.55])
