"""Hallucination rate through the decoding heads: teacher-forced head recall == generation with the head."""

from __future__ import annotations

import pytest
import torch
from memexp_helpers import quick_trainer

from decoding.errors import UserError
from decoding.generate import generate
from decoding.head_spec import parse_head_spec
from decoding.sled import SLED
from memexp.fact_eval import answer_position_index, evaluate_batch, fact_columns


def test_answer_positions_by_hand():
    labels = torch.tensor([[-100, -100, 7, 8, 2, -100], [-100, 5, 2, -100, -100, -100]])
    index, targets, mask = answer_position_index(labels)
    assert index.tolist() == [[1, 2, 3], [0, 1, 0]]
    assert targets.tolist() == [[7, 8, 2], [5, 2, 0]]
    assert mask.tolist() == [[True, True, True], [True, True, False]]


def test_head_specs():
    assert parse_head_spec("dera:lam=2").lam == 2.0
    assert parse_head_spec("sled:evolution_rate=0.5,evolution_scale=5").evolution_scale == 5
    assert parse_head_spec("dola:dola_layers=low").dola_layers == "low"
    with pytest.raises(ValueError, match="unknown head 'beam'"):
        parse_head_spec("beam")
    with pytest.raises(ValueError, match="must look like key=value"):
        parse_head_spec("sled:fast")


@pytest.fixture(scope="module")
def half_trained(tmp_path_factory):
    """A LoRA module trained until some but not all of its facts are recalled, with head metrics."""
    import lightning as L

    from memexp.data import FactsDataModule
    from memexp.fact_tuning import FactTuning

    L.seed_everything(0, verbose=False)
    model = "tiny:llama?hidden=64&layers=2"
    dm = FactsDataModule(model, num_random_facts=12, answer_min_len=6, answer_max_len=8, batch_size=4)
    heads = ["sled:evolution_scale=10", "dola:dola_layers=low", "dera:lam=0", "dera:lam=1", "dera:lam=3"]
    module = FactTuning(model, method="lora", lora_r=16, lora_alpha=32.0, lr=3e-3, eval_heads=heads)
    trainer = quick_trainer(tmp_path_factory.mktemp("heads"), max_epochs=32, check_val_every_n_epoch=32)
    trainer.fit(module, datamodule=dm)
    return module.eval(), dm, trainer


def _generated_exact(module, dm, **kwargs) -> list[bool]:
    prompts = [dm.hparams.template.format(question=f.question) for f in dm.facts]
    out = generate(module.model, dm.tokenizer, prompts, max_new_tokens=9, **kwargs).token_ids
    return [
        gen in (ex.answer_ids, ex.answer_ids[:-1]) and len(gen) >= len(ex.answer_ids) - 1
        for gen, ex in zip(out, dm.train_examples)
    ]


def test_greedy_and_sled_recall_equal_generation(half_trained):
    module, dm, _ = half_trained
    batch = next(iter(dm.val_dataloader()[0]))
    greedy = fact_columns(module(batch), batch["labels"])["exact"]
    assert 0 < int(greedy.sum()) < len(greedy), "need a mix of recalled and not recalled facts"
    assert greedy.tolist() == _generated_exact(module, dm)
    sled = evaluate_batch(module.model, batch, {"s": SLED(evolution_scale=10)}, module.reference)["exact/s"]
    assert sled.tolist() == _generated_exact(module, dm, head=SLED(evolution_scale=10))


def test_dera_end_points_are_base_and_adapted_model(half_trained):
    module, dm, trainer = half_trained
    records = module.fact_records
    assert torch.equal(records["exact/dera:lam=1"], records["exact"])
    batch = next(iter(dm.val_dataloader()[0]))
    with module.reference():
        base = fact_columns(module(batch), batch["labels"])["exact"]
    assert torch.equal(records["exact/dera:lam=0"], base)
    assert not torch.equal(base, records["exact"])
    metrics = trainer.callback_metrics
    for spec in module.eval_heads:
        rate = 1 - records[f"exact/{spec}"].float().mean()
        assert metrics[f"val/hallucination_rate/{spec}"] == pytest.approx(float(rate))


def test_dera_needs_a_reference():
    """Full fine-tuning keeps the backbone's weights only for a DeRa eval head; without one, none."""
    from memexp.fact_tuning import FactTuning

    module = FactTuning("tiny:llama?hidden=64&layers=2", method="full", eval_heads=["sled"])
    with pytest.raises(UserError, match="only when eval_heads has a dera head"):
        module.reference()
    batch = {"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": torch.ones(1, 4),
             "labels": torch.tensor([[-100, -100, 5, 6]]), "fact_ids": torch.tensor([0])}  # fmt: skip
    with pytest.raises(ValueError, match="needs a reference model"):
        evaluate_batch(module.model, batch, {"dera": parse_head_spec("dera:lam=2")})
