"""The one fact-evaluation path == the per-head evaluation it replaced, for full, LoRA and MoME.

The oracle below is the code that ran before ``memexp/fact_eval.py`` (``memexp/recall.py`` answer_stats +
head_exact, ``experiments/probe.py`` fact_columns): one plain forward for the greedy columns, then one
teacher-forced :func:`decoding.layers.layer_logits_at` pass per head (and per DeRa head one more under the
reference). The new path shares one pass between all heads and one reference pass between the DeRa heads.
At the commit that introduced it, a script also compared the new columns with the old functions
themselves on this setting: every float identical, every bool identical.
"""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from memexp_helpers import quick_trainer

from decoding.layers import layer_logits_at, model_info
from memexp.data import IGNORE_INDEX, FactsDataModule, collate_examples
from memexp.fact_eval import (
    FACT_COLUMNS,
    answer_position_index,
    evaluate_facts,
    fact_eval_rows,
    write_fact_evals,
)
from memexp.fact_tuning import FactTuning, parse_eval_heads
from memexp.model_view import head_model

HEADS = ["greedy", "sled", "dola:dola_layers=low", "dera:lam=0.5", "dera:lam=2,head=sled"]
N_FACTS = 12


def make_data(backbone: str) -> FactsDataModule:
    dm = FactsDataModule(
        tokenizer=backbone, num_random_facts=N_FACTS, num_heldout=0, answer_min_len=3, answer_max_len=5,
        eval_batch_size=5, seed=0,
    )  # fmt: skip
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory) -> str:
    """A tiny Llama trained briefly on the facts: it recalls some of them exactly, not all."""
    from decoding.models import load_causal_lm
    from decoding.tiny import build_tiny_lm

    root = tmp_path_factory.mktemp("fact_eval")
    base = str(build_tiny_lm(root / "base", arch="llama", seed=0))
    dm = make_data(base)
    batch = collate_examples(dm.train_examples, dm.tokenizer.pad_token_id)
    model = load_causal_lm(base).train()
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(28):
        loss = model(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]
        ).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(root / "trained")
    dm.tokenizer.save_pretrained(root / "trained")
    return str(root / "trained")


def make_module(method: str, backbone: str) -> L.LightningModule:
    """``method``'s module with every head, moved off its backbone by seeded noise (so DeRa's reference
    differs from the model)."""
    torch.manual_seed(1)
    if method == "mome":
        from memexp.mome import MoMEConfig
        from memexp.mome.tuning import MoMETuning

        cfg = MoMEConfig(
            num_experts=64, k=2, rank=2, sites=["model.layers.[1].mlp.down_proj"], query_layer=1, key_dim=8,
            index={"kind": "exact"},
        )  # fmt: skip
        module = MoMETuning(backbone=backbone, mome=cfg, eval_heads=HEADS)
        with torch.no_grad():
            for site in module.model.sites.values():
                site.B.weight.normal_(0, 2.0)
        return module.eval()
    module = FactTuning(backbone=backbone, method=method, lora_r=2, eval_heads=HEADS)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if method == "full":
                p.add_(0.02 * torch.randn_like(p))
            elif "lora_B" in name:
                p.normal_(0, 0.05)
    return module.eval()


# ---- the oracle: the evaluation as it was ---------------------------------------------------------
@torch.no_grad()
def old_columns(model, batch: dict, heads: dict, reference) -> dict[str, torch.Tensor]:
    view = head_model(model, batch)
    logits = view(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logits, labels = logits[:, :-1].float(), batch["labels"]
    targets = labels[:, 1:]
    mask = targets != IGNORE_INDEX
    safe = targets.clamp_min(0)
    token_nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), safe, reduction="none") * mask
    num_tokens = mask.sum(1)
    nll_sum, max_tok = token_nll.sum(1), token_nll.max(1).values
    cols = {
        "fact_id": batch["fact_ids"],
        "nll": nll_sum / num_tokens.clamp_min(1),
        "nll_sum": nll_sum,
        "max_tok_nll": max_tok,
        "min_tok_p": torch.exp(-max_tok),
        "exact": ((logits.argmax(-1) == safe) | ~mask).all(1) & (num_tokens > 0),
        "answer_exact": torch.tensor(  # the answer tokens without their eos, row by row
            [
                bool((logits[i].argmax(-1) == safe[i])[mask[i]][:-1].all()) and int(num_tokens[i]) > 1
                for i in range(len(safe))
            ]
        ),
        "num_tokens": num_tokens,
    }
    n, tied = model_info(view)
    index, answer, real = answer_position_index(labels)
    for spec, head in heads.items():
        args = (batch["input_ids"], batch["attention_mask"], index, head.required_layers(n, tied))
        x = layer_logits_at(view, *args)
        ref = None
        if head.uses_ref:
            with reference():
                ref = layer_logits_at(view, *args)
        cols[f"exact/{spec}"] = ((head(x, ref).argmax(-1) == answer) | ~real).all(1)
    return cols


def assert_same(new: dict, old: dict) -> None:
    assert list(new) == list(old)
    for name, value in old.items():
        if value.is_floating_point():
            assert torch.allclose(new[name].double(), value.double(), rtol=1e-6, atol=1e-6), name
        else:
            assert torch.equal(new[name], value), name


@pytest.mark.parametrize("method", ["full", "lora", "mome"])
def test_evaluate_facts_equals_the_per_head_evaluation_and_validation_logs_it(method, trained_dir, tmp_path):
    dm = make_data(trained_dir)
    module = make_module(method, trained_dir)
    heads = parse_eval_heads(HEADS)
    loader = dm.val_dataloader()[0]
    old = [old_columns(module.model, batch, heads, module.reference) for batch in loader]
    old = {name: torch.cat([part[name] for part in old]) for name in old[0]}
    assert list(old) == [*FACT_COLUMNS, *(f"exact/{spec}" for spec in HEADS)]
    assert 0 < int(old["exact"].sum()) < N_FACTS, "need recalled and not recalled facts"
    reference_differs = not torch.equal(old["exact/dera:lam=2,head=sled"], old["exact/sled"])
    assert reference_differs or not torch.equal(old["exact/dera:lam=0.5"], old["exact"])

    assert_same(evaluate_facts(module.model, loader, heads, module.reference), old)
    # FactTuning's validation (MoME's too) goes through the same path and logs every head
    trainer = quick_trainer(tmp_path, max_epochs=1)
    metrics = trainer.validate(module, datamodule=dm, verbose=False)[0]
    assert_same(module.fact_records, old)
    for spec in HEADS:
        rate = 1.0 - old[f"exact/{spec}"].float().mean().item()
        assert metrics[f"val/hallucination_rate/{spec}"] == pytest.approx(rate)


def test_full_reference_swaps_the_backbone_weights_in_and_out(trained_dir):
    from decoding.models import load_causal_lm

    module = make_module("full", trained_dir)
    batch = collate_examples(make_data(trained_dir).train_examples, 0)
    with torch.no_grad():
        tuned = module(batch)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        base = load_causal_lm(trained_dir)(input_ids=ids, attention_mask=mask)
        with module.reference():
            assert torch.equal(module(batch), base.logits)
        assert torch.equal(module(batch), tuned)
    assert FactTuning(trained_dir, method="full", eval_heads=["sled"])._base_state is None  # no copy


def test_fact_evals_rows_and_file(tmp_path):
    records = {
        "fact_id": torch.tensor([3, 7]),
        "nll": torch.tensor([0.5, math.nan]),
        "exact": torch.tensor([True, False]),
        "num_tokens": torch.tensor([4, 5]),
        "exact/sled": torch.tensor([False, True]),
    }
    rows = fact_eval_rows(records, epoch=2, step=10)
    assert rows[0] == {"epoch": 2, "step": 10, "fact_id": 3, "nll": 0.5, "exact": 1, "num_tokens": 4,
                       "exact/sled": 0}  # fmt: skip
    path = tmp_path / "fact_evals.csv"
    write_fact_evals(path, rows, append=True)  # a new file gets its header
    write_fact_evals(path, fact_eval_rows(records, 3, 20), append=True)
    lines = path.read_text().splitlines()
    assert lines[0] == "epoch,step,fact_id,nll,exact,num_tokens,exact/sled"
    assert lines[1:] == ["2,10,3,0.5,1,4,0", "2,10,7,nan,0,5,1", "3,20,3,0.5,1,4,0", "3,20,7,nan,0,5,1"]
    with pytest.raises(ValueError, match="has columns"):
        write_fact_evals(path, [{"epoch": 1, "fact_id": 1}], append=True)
