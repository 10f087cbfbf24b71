"""Fixtures of the decoding tests: "sharp" tiny models whose layers disagree and whose outputs are peaked.

The seeded tiny models have GPT-2-style init (std 0.02), which makes every layer's distribution
almost uniform, so all heads would pick the same tokens and the tests would prove little. These
fixtures re-initialise the same architectures with unit-scale weights (seeded) and save them with
``save_pretrained``: the tied GPT-2 then has a near one-hot layer 0 (``lm_head(embed(x))`` peaks on
x), the case where SLED's closed-form cosine cancels catastrophically in fp32.
"""

from __future__ import annotations

import math

import pytest
import torch


def sharpen(model: torch.nn.Module, seed: int, lm_std: float = 0.5) -> torch.nn.Module:
    """Unit-scale re-initialisation: embeddings N(0, 1), matrices N(0, 1/fan_in), lm_head N(0, lm_std^2)."""
    gen = torch.Generator().manual_seed(seed)
    out = model.get_output_embeddings()
    inp = model.get_input_embeddings()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() < 2:
                continue
            if p is inp.weight:
                std = 1.0
            elif p is out.weight:
                std = lm_std
            else:
                std = 1.0 / math.sqrt(min(p.shape))
            p.copy_(torch.randn(p.shape, generator=gen) * std)
    return model


def _sharp_dir(tmp_path_factory, arch: str, seed: int, layers: int = 4, src=None) -> str:
    from decoding.models import load_causal_lm, load_tokenizer
    from decoding.tiny import build_tiny_lm

    base = src or str(build_tiny_lm(tmp_path_factory.mktemp("src") / arch, arch=arch, layers=layers, seed=0))
    model = sharpen(load_causal_lm(base), seed)
    out = tmp_path_factory.mktemp("sharp") / f"{arch}{seed}"
    model.save_pretrained(out)
    load_tokenizer(base).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def sharp_llama_dir(tmp_path_factory) -> str:
    """Tiny untied Llama, 4 layers, hidden 64, vocab 384, unit-scale weights (seed 1)."""
    return _sharp_dir(tmp_path_factory, "llama", 1)


@pytest.fixture(scope="session")
def sharp_llama2_dir(tmp_path_factory, sharp_llama_dir) -> str:
    """Same architecture and tokenizer as ``sharp_llama_dir``, other weights (seed 2): DeRa's reference."""
    return _sharp_dir(tmp_path_factory, "llama", 2, src=sharp_llama_dir)


@pytest.fixture(scope="session")
def sharp_gpt2_dir(tmp_path_factory) -> str:
    """Tiny tied GPT-2, 4 layers, unit-scale weights (seed 3): layer 0 is near one-hot."""
    return _sharp_dir(tmp_path_factory, "gpt2", 3)


@pytest.fixture(scope="session")
def llama(sharp_llama_dir):
    from decoding.models import load_causal_lm, load_tokenizer

    return load_causal_lm(sharp_llama_dir).eval(), load_tokenizer(sharp_llama_dir)


@pytest.fixture(scope="session")
def llama2(sharp_llama2_dir):
    from decoding.models import load_causal_lm

    return load_causal_lm(sharp_llama2_dir).eval()


@pytest.fixture(scope="session")
def gpt2(sharp_gpt2_dir):
    from decoding.models import load_causal_lm, load_tokenizer

    return load_causal_lm(sharp_gpt2_dir).eval(), load_tokenizer(sharp_gpt2_dir)


PROMPTS = ["Q: What is the code of the city", "Q: who wrote", "A: 42 is the number of", "Q:"]
