"""Recall of the MoME demo's first 16 facts through every way of calling the trained model.

    memexp fit --config configs/memexp/mome_demo.yaml --trainer.default_root_dir=runs/mome_demo
    python benchmarks/mome_call_paths.py runs/mome_demo/mome

Measured at wt-mome-pkg (seed 0, 0% hallucination at epoch 117): 16/16 for generate with and without the
KV cache, for one forward of prompt + answer without a question mask (with and without labels) and with
the explicit prompt mask; 0/16 when the router pools over prompt + answer (the default before
question_end) or over prompt + generated tokens (generation without a cache before).
"""

import argparse

import torch

from memexp.data import FactsDataModule, collate_examples
from memexp.mome import load_mome

BACKBONE = "tiny:llama?hidden=128&layers=4&pretrain_steps=600"  # the demo's (configs/memexp/mome_demo.yaml)


def gen(mome, tok, ex, **kw):
    prompt = torch.tensor([ex.prompt_ids])
    out = mome.generate(
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=len(ex.answer_ids) + 2,
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        **kw,
    )
    return out[0, prompt.shape[1] :].tolist()[: len(ex.answer_ids)] == ex.answer_ids


def whole_input_loop(mome, ex):  # the old default without a cache: pool over prompt + generated tokens
    seq = torch.tensor([ex.prompt_ids])
    for _ in ex.answer_ids:
        nxt = (
            mome(seq, question_mask=torch.ones_like(seq, dtype=torch.bool))
            .logits[:, -1]
            .argmax(-1, keepdim=True)
        )
        seq = torch.cat([seq, nxt], 1)
    return seq[0, len(ex.prompt_ids) :].tolist() == ex.answer_ids


def scored(mome, batch, **kw):  # one forward of prompt + answer, greedy-exact per fact
    logits = mome(batch["input_ids"], attention_mask=batch["attention_mask"], **kw).logits
    labels = batch["labels"]
    hit = (logits[:, :-1].argmax(-1) == labels[:, 1:]) | (labels[:, 1:] == -100)
    return hit.all(1).sum().item()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("folder", help="the demo run's mome/ folder")
    mome = load_mome(BACKBONE, parser.parse_args().folder).eval()
    dm = FactsDataModule(tokenizer=BACKBONE, num_random_facts=200, num_heldout=50, batch_size=16)
    dm.setup()
    tok = dm.tokenizer
    examples = dm.train_examples[:16]
    print("question_end", mome.config.question_end)
    with torch.no_grad():
        batch = collate_examples(examples, tok.pad_token_id)
        print("generate, cache:", sum(gen(mome, tok, e, use_cache=True) for e in examples), "/ 16")
        print("generate, no cache:", sum(gen(mome, tok, e, use_cache=False) for e in examples), "/ 16")
        print(
            "greedy loop pooling over the whole input (old no-cache behaviour):",
            sum(whole_input_loop(mome, e) for e in examples),
            "/ 16",
        )
        print("forward prompt+answer, no mask, no labels:", scored(mome, batch), "/ 16")
        print("forward prompt+answer, labels:", scored(mome, batch, labels=batch["labels"]), "/ 16")
        print(
            "forward prompt+answer, explicit prompt_mask:",
            scored(mome, batch, question_mask=batch["prompt_mask"]),
            "/ 16",
        )
        print(
            "forward prompt+answer pooled over everything (old default):",
            scored(mome, batch, question_mask=batch["attention_mask"].bool()),
            "/ 16",
        )


if __name__ == "__main__":
    main()
