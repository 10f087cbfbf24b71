"""``memexp fit --config configs/memexp/mome_demo.yaml`` end to end (shrunk by command-line overrides)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from decoding.models import load_tokenizer
from memexp.cli import main
from memexp.mome.checkpoint import load_mome

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "memexp" / "mome_demo.yaml"


def test_fit_with_the_demo_config_writes_results_and_a_loadable_mome(tmp_path):
    root = tmp_path / "run"
    backbone = "tiny:llama?layers=4"
    main(
        [
            "fit",
            "--config",
            str(CONFIG),
            f"--model.init_args.backbone={backbone}",
            "--model.init_args.mome.num_experts=64",
            "--data.init_args.num_random_facts=8",
            "--data.init_args.num_heldout=2",
            "--data.init_args.batch_size=4",
            "--trainer.max_epochs=3",
            f"--trainer.default_root_dir={root}",
            "--trainer.logger=false",
            "--trainer.enable_progress_bar=false",
        ]
    )
    results = json.loads((root / "results.json").read_text())
    assert results["status"] == "finished" and results["epochs"] == 3
    mome = load_mome(backbone, root / "mome")
    assert mome.config.num_experts == 64 and mome.router.index.config.kind == "flat"
    assert any(site.B.weight.abs().sum() > 0 for site in mome.sites.values())  # experts were trained
    assert not any(
        p.requires_grad
        for n, p in mome.backbone.named_parameters()
        if not n.endswith((".A.weight", ".B.weight"))
    )
    assert (root / "expert_usage.png").stat().st_size > 0
    # the trained prompt format travels with the experts: prompt + answer without a question mask
    # routes like the prompt alone
    tokenizer = load_tokenizer(backbone)
    tail = tokenizer("\nA:", add_special_tokens=False).input_ids
    assert mome.config.question_end and mome.config.question_end == tail[-len(mome.config.question_end) :]
    prompt = tokenizer("Q: What is the code of Varo Tesk?\nA:").input_ids
    ids = torch.tensor([prompt + tokenizer(" K7Q2ZP0M", add_special_tokens=False).input_ids])
    qmask = torch.arange(ids.shape[1])[None] < len(prompt)
    mome.eval()
    torch.testing.assert_close(mome(ids).logits, mome(ids, question_mask=qmask).logits, rtol=0, atol=0)
    assert next((root / "checkpoints").glob("last*.ckpt")).stat().st_size > 0
