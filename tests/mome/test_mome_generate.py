"""One MoME model for every consumer: ``decoding.generate(MoMEModel)``, ``decoding generate --model DIR``."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import tomllib
import torch

from decoding.generate import generate
from decoding.models import load_tokenizer, register_model_loader
from memexp.model_loader import MOME_FOLDER
from memexp.mome import MoMEConfig, MoMEModel
from memexp.mome.checkpoint import save_mome
from memexp.mome.index import IndexConfig
from memexp.mome.question import common_question_end

PROMPTS = ["Q: What is the code of the city?\nA:", "Q: who wrote it?\nA:", "Q: 42 is the number of what?\nA:"]


def question_end(tiny_llama_dir: str) -> list[int]:
    """The ids that end every prompt (what ``MoMETuning`` records from the trained prompts)."""
    tok = load_tokenizer(tiny_llama_dir)
    ids = [tok(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    return common_question_end(ids, tok("\nA:", add_special_tokens=False)["input_ids"])


@pytest.fixture
def mome(backbone, tiny_llama_dir) -> MoMEModel:
    """Experts on the last block with large random outputs: they change what the model generates."""
    cfg = MoMEConfig(
        num_experts=64, k=2, rank=2, sites=["model.layers.[1].mlp.down_proj"], query_layer=1, key_dim=8,
        index=IndexConfig(kind="exact"), question_end=question_end(tiny_llama_dir),
    )  # fmt: skip
    torch.manual_seed(0)
    model = MoMEModel(backbone, cfg).eval()
    with torch.no_grad():
        for site in model.sites.values():
            site.B.weight.normal_(0, 1.0)
    return model


def test_generate_takes_the_mome_model_routed_on_each_prompt(mome, tiny_llama_dir):
    tok = load_tokenizer(tiny_llama_dir)
    out = generate(mome, tok, PROMPTS, max_new_tokens=6).token_ids
    assert out == [generate(mome, tok, p, max_new_tokens=6).token_ids[0] for p in PROMPTS]  # batch == alone
    assert out == generate(mome.backbone, tok, PROMPTS, max_new_tokens=6).token_ids  # the hooked backbone
    with mome.experts_off():
        assert out != generate(mome, tok, PROMPTS, max_new_tokens=6).token_ids  # the experts matter


def test_decoding_cli_generates_from_a_mome_folder(mome, tiny_llama_dir, tmp_path, capsys):
    from decoding.cli import main

    register_model_loader("mome", MOME_FOLDER)  # an editable install made before the entry point lacks it
    folder = save_mome(mome, tmp_path / "mome", backbone_name=tiny_llama_dir)
    tok = load_tokenizer(tiny_llama_dir)
    prompts = [arg for p in PROMPTS for arg in ("--prompt", p)]
    args = ["generate", "--model", str(folder), *prompts, "--max_new_tokens", "6", "--json"]
    main(args)
    rows = json.loads(capsys.readouterr().out)
    assert [r["token_ids"] for r in rows] == generate(mome, tok, PROMPTS, max_new_tokens=6).token_ids
    main([*args, "--head", "dera", "--lam", "0", "--ref_model", "adapters-off"])  # reference: experts off
    rows = json.loads(capsys.readouterr().out)
    with mome.experts_off():
        assert [r["token_ids"] for r in rows] == generate(mome, tok, PROMPTS, max_new_tokens=6).token_ids


def test_the_mome_loader_is_declared_as_an_entry_point():
    """A fresh ``pip install`` registers :data:`MOME_FOLDER` with decoding (pyproject.toml)."""
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    target = pyproject["project"]["entry-points"]["decoding.model_loaders"]["mome"]
    module, name = target.split(":")
    assert getattr(importlib.import_module(module), name) is MOME_FOLDER


def test_a_folder_that_names_no_backbone_is_refused_in_one_line(mome, tmp_path):
    from decoding.errors import UserError
    from decoding.models import load_causal_lm

    register_model_loader("mome", MOME_FOLDER)
    folder = save_mome(mome, tmp_path / "mome")
    with pytest.raises(UserError, match="does not name its backbone"):
        load_causal_lm(folder)


def test_a_prompt_without_the_trained_question_end_is_refused_not_misrouted(mome, tiny_llama_dir):
    from decoding.errors import UserError

    with pytest.raises(UserError, match="question_mask"):
        generate(mome, load_tokenizer(tiny_llama_dir), ["no question end here"], max_new_tokens=2)
