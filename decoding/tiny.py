"""Seeded tiny HF causal LMs with locally trained tokenizers, for offline demos and tests.

Two architectures cover the two embedding layouts the decoding heads must handle:

- ``llama``: a Llama-style model with **untied** input/output embeddings;
- ``gpt2``: a GPT-2-style model with **tied** embeddings.

The tokenizer is a byte-level BPE trained with the ``tokenizers`` library on a small embedded
corpus, so nothing is downloaded. Both are written with ``save_pretrained``, so they load through
the same code path as a real checkpoint::

    from decoding.tiny import build_tiny_lm
    path = build_tiny_lm("/tmp/tiny-llama", arch="llama", seed=0)
    model = AutoModelForCausalLM.from_pretrained(path)  # works with HF_HUB_OFFLINE=1
    tokenizer = AutoTokenizer.from_pretrained(path)

The names ``tiny:llama`` and ``tiny:gpt2`` (optionally ``tiny:llama?hidden=128&layers=4``, and
``&pretrain_steps=600`` for a model pretrained on an embedded corpus, see :func:`pretrain_tiny_model`) are
accepted wherever a model path is (see :func:`decoding.models.resolve_model_path`); they are built
once into a cache folder keyed by their settings.
"""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from decoding.provenance import reproducible_build
from decoding.run_folder import atomic_write_dir

ARCHS = ("llama", "gpt2")
BUILDER_VERSION = 3  # part of the cache key: bump when the corpus, tokenizer or model recipe changes
# v3: built with one torch thread (decoding.provenance.reproducible_build), so the weights no longer
# depend on the builder's thread count
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


@dataclass(frozen=True)
class TinyLMConfig:
    """Size of a tiny causal LM.

    Attributes:
        arch: ``llama`` (untied embeddings) or ``gpt2`` (tied embeddings).
        hidden: hidden size.
        layers: number of transformer blocks.
        heads: attention heads.
        vocab: target vocabulary size of the trained BPE tokenizer (<= 512 keeps tests fast).
        max_positions: maximum sequence length.
        seed: seed for the weights and the tokenizer corpus.
        pretrain_steps: AdamW steps of causal-LM pretraining on :func:`pretrain_corpus` (0: random
            weights). A pretrained tiny model has a trained lm_head and embeddings, which adapter methods
            (LoRA, memory experts) that keep them frozen need; a random one bounds their logits.
    """

    arch: str = "llama"
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    vocab: int = 512
    max_positions: int = 256
    seed: int = 0
    pretrain_steps: int = 0

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown tiny arch {self.arch!r}; choose one of {ARCHS}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden={self.hidden} must be divisible by heads={self.heads}")
        if self.pretrain_steps < 0:
            raise ValueError(f"pretrain_steps={self.pretrain_steps} must be >= 0")


def tokenizer_corpus(seed: int = 0, n_lines: int = 4000) -> list[str]:
    """Embedded training text for the tiny tokenizer: QA templates over a small English vocabulary.

    Random codes are left out on purpose: [A-Z0-9] then stay single-character tokens.
    """
    rng = random.Random(seed)
    words = (
        "the of and is was what who code answer question name true false yes no not I have comment "
        "red green blue black white silver golden hidden northern southern eastern western ancient modern "
        "quiet loud bright dark frozen burning silent hollow iron stone crystal velvet copper amber wild "
        "little grand broken secret lost royal lunar solar misty sandy rocky stormy sunny windy "
        "river mountain forest castle harbor valley island bridge tower garden desert village temple "
        "meadow canyon lake palace market library station lantern compass anchor falcon wolf tiger "
        "dragon phoenix raven owl fox bear lion eagle whale shark comet planet star moon ocean"
    ).split()
    lines = []
    for _ in range(n_lines):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(3, 12)))
        lines.append(f"Q: What is the code of {sentence}?\nA: {rng.randint(0, 10_000)}.")
    return lines


def pretrain_corpus(seed: int = 0, n_lines: int = 4000) -> list[str]:
    """Pretraining text: the tokenizer corpus's questions answered by random [A-Z0-9] codes of 8-32 chars.

    It teaches the answer format and alphabet of the Lamini-style facts (``memexp.facts``) without any
    of their answers: the questions are random word strings, the codes are drawn independently.
    """
    rng = random.Random(seed + 1)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    lines = []
    for line in tokenizer_corpus(seed, n_lines):
        question = line.split("\nA:")[0]
        code = "".join(rng.choice(alphabet) for _ in range(rng.randint(8, 32)))
        lines.append(f"{question}\nA: {code}")
    return lines


def pretrain_tiny_model(model, tokenizer, steps: int, seed: int = 0, batch_size: int = 32, lr: float = 3e-3):
    """Causal-LM pretraining of ``model`` on :func:`pretrain_corpus` (AdamW, cosine decay, seeded, CPU).

    Returns:
        The mean loss of the last 10 steps (nats per token).
    """
    lines = [line + tokenizer.eos_token for line in pretrain_corpus(seed)]
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / steps))
    )
    from tqdm.auto import tqdm

    model.train()
    losses = []
    bar = tqdm(range(steps), desc="pretraining the tiny LM", unit="step", leave=False)
    for _ in bar:
        rows = torch.randint(len(lines), (batch_size,), generator=gen).tolist()
        batch = tokenizer([lines[i] for i in rows], return_tensors="pt", padding=True)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)  # (B, T)
        loss = model(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    return sum(losses[-10:]) / len(losses[-10:])


def train_tokenizer(vocab: int = 512, seed: int = 0):
    """Train a byte-level BPE tokenizer locally and wrap it as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=[SPECIAL_TOKENS[k] for k in ("pad_token", "bos_token", "eos_token", "unk_token")],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tokenizer_corpus(seed), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def build_tiny_model(cfg: TinyLMConfig, vocab_size: int, special_ids: dict[str, int]):
    """Build a randomly initialised (seeded) tiny model of ``cfg.arch``."""
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    if cfg.arch == "llama":
        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.hidden,
            intermediate_size=cfg.hidden * 2,
            num_hidden_layers=cfg.layers,
            num_attention_heads=cfg.heads,
            num_key_value_heads=max(1, cfg.heads // 2),
            max_position_embeddings=cfg.max_positions,
            tie_word_embeddings=False,
            **special_ids,
        )
        return LlamaForCausalLM(config)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_embd=cfg.hidden,
        n_layer=cfg.layers,
        n_head=cfg.heads,
        n_positions=cfg.max_positions,
        tie_word_embeddings=True,
        **special_ids,
    )
    return GPT2LMHeadModel(config)


def build_tiny_lm(out_dir: str | os.PathLike, arch: str = "llama", **sizes) -> Path:
    """Build and save a seeded tiny causal LM + tokenizer into ``out_dir`` (atomically).

    Args:
        out_dir: target folder; it must not exist yet or be empty.
        arch: ``llama`` or ``gpt2``.
        **sizes: other :class:`TinyLMConfig` fields (``hidden``, ``layers``, ``heads``, ``vocab``,
            ``max_positions``, ``seed``).

    Returns:
        The folder, loadable with ``AutoModelForCausalLM/AutoTokenizer.from_pretrained``.
    """
    cfg = TinyLMConfig(arch=arch, **sizes)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; pick a new folder for the tiny model")
    tokenizer = train_tokenizer(cfg.vocab, cfg.seed)
    special_ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    model = build_tiny_model(cfg, len(tokenizer), special_ids)
    record = asdict(cfg)
    if cfg.pretrain_steps:
        record["pretrain_final_loss"] = pretrain_tiny_model(model, tokenizer, cfg.pretrain_steps, cfg.seed)

    def fill(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "tiny_lm.json").write_text(json.dumps(record, indent=2))

    return atomic_write_dir(out, fill, replace=False)  # an empty folder is replaced, a full one kept


def parse_tiny_name(name: str) -> TinyLMConfig:
    """Parse ``tiny:ARCH[?key=value&...]`` into a :class:`TinyLMConfig`."""
    spec = name.removeprefix("tiny:")
    arch, _, query = spec.partition("?")
    fields = {}
    for item in filter(None, query.split("&")):
        key, _, value = item.partition("=")
        if key not in TinyLMConfig.__dataclass_fields__ or key == "arch":
            allowed = sorted(set(TinyLMConfig.__dataclass_fields__) - {"arch"})
            raise ValueError(f"unknown tiny model option {key!r} in {name!r}; allowed: {allowed}")
        fields[key] = int(value)
    return TinyLMConfig(arch=arch, **fields)


def tiny_cache_dir() -> Path:
    """Where ``tiny:`` models are built: ``$MEMEXP_CACHE`` or ``~/.cache/memexp``."""
    return Path(os.environ.get("MEMEXP_CACHE", Path.home() / ".cache" / "memexp"))


def ensure_tiny_lm(name: str) -> Path:
    """Return the folder of the tiny model ``name`` (``tiny:llama``...), building it if needed."""
    cfg = parse_tiny_name(name)
    key = "-".join(f"{k}{v}" for k, v in asdict(cfg).items())
    out = tiny_cache_dir() / f"tiny-v{BUILDER_VERSION}-{key}"
    if not (out / "config.json").exists():
        try:
            with reproducible_build():  # one thread, and the caller's RNG does not move
                build_tiny_lm(out, **asdict(cfg))
        except OSError:  # another process (a DDP rank) built it concurrently: use theirs
            if not (out / "config.json").exists():
                raise
    return out
