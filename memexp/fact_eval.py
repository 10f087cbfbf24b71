"""The one fact-evaluation path: per-fact answer NLL and exact recall per decoding head; ``fact_evals.csv``.

Every learner evaluates here (:class:`memexp.fact_tuning.FactTuning`'s validation, hence
:class:`memexp.mome.tuning.MoMETuning`'s, and the experiments' probe)::

    cols = evaluate_batch(model, batch, heads={"sled": SLED()}, reference=reference_of(model))
    cols["fact_id"], cols["nll"], cols["nll_sum"], cols["max_tok_nll"], cols["min_tok_p"],
    cols["exact"], cols["num_tokens"], cols["exact/sled"]          # each (B,)

Greedy exact match is decided without a generation loop: greedy decoding reproduces the answer (its
tokens, then EOS) **iff** at every answer position the argmax of the logits, given the true prefix, is
the true next token (induction over positions: while the prefixes agree, greedy's next token is that
argmax). So one teacher-forced pass over ``prompt + answer`` gives the exact match of all facts at once
(``tests/memexp/test_recall_heads.py`` checks it against generation). The same holds for any head that
maps the logits at a position to a token (SLED, DoLa, DeRa): its scores replace the logits. All heads
share the model's one forward pass (its hidden states are projected at the answer positions only); the
DeRa heads share one more pass under the reference (:func:`memexp.model_view.reference_of`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from decoding.run_folder import atomic_write_text
from memexp.answer_logits import answer_positions, answer_targets, answer_token_nll
from memexp.model_view import Reference, head_model

FACT_EVALS = "fact_evals.csv"
# per-fact columns of every evaluation, then ``exact/<head spec>`` per decoding head
FACT_COLUMNS = (
    "fact_id", "nll", "nll_sum", "max_tok_nll", "min_tok_p", "exact", "answer_exact", "num_tokens",
)  # fmt: skip


@torch.no_grad()
def fact_columns(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Per-fact fields from one teacher-forced pass (logits at every position).

    Args:
        logits: (B, T, V), position t predicts token t + 1.
        labels: (B, T), ``-100`` outside answer + eos.

    Returns:
        :func:`answer_columns` of the logits at the answer positions.
    """
    return answer_columns(logits[answer_positions(labels)], labels)


@torch.no_grad()
def answer_columns(logits: Tensor, labels: Tensor) -> dict[str, Tensor]:
    """Per-fact fields from the logits at the answer positions only (what the LM head computes when it
    runs there alone: :mod:`memexp.answer_logits`).

    Args:
        logits: (N, V) at the N true positions of ``answer_positions(labels)``, in row-major order.
        labels: (B, T), ``-100`` outside answer + eos.

    Returns:
        (B,) tensors: ``nll`` (per answer token), ``nll_sum`` (nats, summed over answer tokens + eos),
        ``max_tok_nll`` (worst token), ``min_tok_p`` = exp(-max_tok_nll), ``exact`` (greedy decoding
        reproduces answer + eos), ``answer_exact`` (greedy decoding begins with the answer; its eos is not
        required: for answers the model says in its own words and then goes on) and ``num_tokens``.
    """
    keep = answer_positions(labels)  # (B, T)
    rows = keep.nonzero()[:, 0]  # (N,) the fact of each answer position
    bsz = labels.shape[0]
    token = answer_token_nll(logits, labels, keep)  # (N,)
    miss = logits.float().argmax(-1) != answer_targets(labels, keep)  # (N,)
    last = torch.ones_like(miss)  # (N,) the eos position of each answer (the last of its fact)
    last[:-1] = rows[1:] != rows[:-1]
    num_tokens = keep.sum(1)  # (B,)
    nll_sum = token.new_zeros(bsz).index_add_(0, rows, token)
    max_tok = token.new_zeros(bsz).scatter_reduce_(0, rows, token, "amax")  # NLL >= 0: 0 when no answer
    misses = num_tokens.new_zeros(bsz).index_add_(0, rows, miss.long())
    early_misses = num_tokens.new_zeros(bsz).index_add_(0, rows, (miss & ~last).long())
    return {
        "nll": nll_sum / num_tokens.clamp_min(1),
        "nll_sum": nll_sum,
        "max_tok_nll": max_tok,
        "min_tok_p": torch.exp(-max_tok),
        "exact": (misses == 0) & (num_tokens > 0),
        "answer_exact": (early_misses == 0) & (num_tokens > 1),
        "num_tokens": num_tokens,
    }


def answer_position_index(labels: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Positions whose next token is an answer token, as a padded index (the heads read logits there).

    Args:
        labels: (B, T) with ``-100`` outside answer + eos.

    Returns:
        index (B, P) positions t (predicting token t + 1), targets (B, P), mask (B, P) of real entries;
        P is the longest answer in the batch, shorter rows are padded with position 0 and mask False.
    """
    scored = answer_positions(labels)[:, :-1]  # (B, T-1)
    counts = scored.sum(1)
    P = int(counts.max())
    order = torch.argsort((~scored).to(torch.int8), dim=1, stable=True)[:, :P]  # scored positions first
    mask = torch.arange(P, device=labels.device)[None, :] < counts[:, None]  # (B, P)
    index = torch.where(mask, order, torch.zeros_like(order))
    targets = torch.where(mask, labels[:, 1:].gather(1, order), torch.zeros_like(order))
    return index, targets, mask


def _union_layers(heads: Iterable, num_layers: int, tied: bool) -> tuple[int, ...]:
    return tuple(sorted({i for head in heads for i in head.required_layers(num_layers, tied)}))


def _pass(model: nn.Module, batch: dict[str, Tensor], layers: Sequence[int]):
    """One teacher-forced forward; hidden states only when early layers are wanted."""
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        output_hidden_states=bool(layers),
    )


def _at_answers(model: nn.Module, out, index: Tensor, layers: tuple[int, ...], n: int, tied: bool):
    """LayerLogits at the answer positions ``index`` (B, P): early (C, B, P, V), mature (B, P, V)."""
    from decoding.layers import LayerLogits, project_layers

    vocab = out.logits.shape[-1]
    mature = out.logits.gather(1, index.unsqueeze(-1).expand(*index.shape, vocab))  # (B, P, V)
    if layers:
        early = project_layers(model, out.hidden_states, layers, index=index)  # one stacked lm_head GEMM
    else:
        early = mature.new_zeros(0, *mature.shape)
    return LayerLogits(early, mature, layers, n, tied)


def _only(x, layers: tuple[int, ...]):
    """``x`` restricted to the early ``layers`` a head asked for (in its order)."""
    from decoding.layers import LayerLogits

    early = x.select(layers) if layers else x.early[:0]
    return LayerLogits(early, x.mature, layers, x.num_layers, x.tied)


@torch.no_grad()
def evaluate_batch(
    model: nn.Module,
    batch: dict[str, Tensor],
    heads: dict | None = None,
    reference: Reference | None = None,
) -> dict[str, Tensor]:
    """Per-fact columns of one facts batch: :data:`FACT_COLUMNS` and ``exact/<spec>`` per head.

    Args:
        model: the learner's model: an HF causal LM (full fine-tuning), a peft model (LoRA) or a
            memory-expert model (routed on the batch's ``prompt_mask``, :func:`memexp.model_view.head_model`).
        batch: a facts batch (``input_ids``, ``attention_mask``, ``labels``, ``fact_ids``, ``prompt_mask``).
        heads: decoding heads by spec (``{"sled": SLED(), ...}``); greedy is always the ``exact`` column.
        reference: context-manager factory for the model without its adaptation (DeRa heads).

    Raises:
        ValueError: a DeRa head without a reference.
    """
    heads = heads or {}
    view = head_model(model, batch)
    if not heads:
        cols = fact_columns(_pass(view, batch, ()).logits, batch["labels"])
        return {"fact_id": batch["fact_ids"], **cols}
    from decoding.layers import model_info

    n, tied = model_info(view)
    layers = _union_layers(heads.values(), n, tied)
    out = _pass(view, batch, layers)
    cols = {"fact_id": batch["fact_ids"], **fact_columns(out.logits, batch["labels"])}
    index, targets, mask = answer_position_index(batch["labels"])
    x = _at_answers(view, out, index, layers, n, tied)
    del out
    ref = None
    ref_heads = [h for h in heads.values() if h.uses_ref]
    if ref_heads:
        if reference is None:
            spec = next(s for s, h in heads.items() if h.uses_ref)
            raise ValueError(f"head {spec!r} needs a reference model (the model without its adaptation)")
        ref_layers = _union_layers(ref_heads, n, tied)
        with reference():
            ref = _at_answers(view, _pass(view, batch, ref_layers), index, ref_layers, n, tied)
    for spec, head in heads.items():
        need = tuple(head.required_layers(n, tied))
        scores = head(_only(x, need), _only(ref, need) if head.uses_ref else None)  # (B, P, V')
        cols[f"exact/{spec}"] = ((scores.argmax(-1) == targets) | ~mask).all(1)
    return cols


@torch.no_grad()
def evaluate_facts(
    model: nn.Module,
    batches: Iterable[dict[str, Tensor]],
    heads: dict | None = None,
    reference: Reference | None = None,
) -> dict[str, Tensor]:
    """:func:`evaluate_batch` over ``batches`` (e.g. a facts DataLoader) in eval mode; CPU columns."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    parts = []
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            parts.append({k: v.cpu() for k, v in evaluate_batch(model, batch, heads, reference).items()})
    finally:
        model.train(was_training)
    return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


# ---- fact_evals.csv: one schema, one writer ------------------------------------------------------------
def fact_eval_rows(records: dict[str, Tensor], epoch: int, step: int) -> list[dict[str, int | float]]:
    """One row per fact: ``epoch``, ``step``, :data:`FACT_COLUMNS`, then ``exact/<spec>`` per head.

    Integers and booleans stay integers (``exact`` is 0 or 1), the rest are floats.
    """
    names = [c for c in FACT_COLUMNS if c in records] + [k for k in records if k.startswith("exact/")]
    columns = {name: records[name].tolist() for name in names}
    rows = []
    for i in range(len(records["fact_id"])):
        row: dict[str, int | float] = {"epoch": int(epoch), "step": int(step)}
        for name in names:
            value = columns[name][i]
            row[name] = int(value) if isinstance(value, bool | int) else float(value)
        rows.append(row)
    return rows


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def write_fact_evals(path: str | Path, rows: list[dict], append: bool = False) -> None:
    """Write ``rows`` (from :func:`fact_eval_rows`, maybe with extra columns) as ``fact_evals.csv``.

    A new file (or ``append=False``) is written atomically with its header; ``append=True`` adds the rows
    to an existing file (one evaluation at a time; :class:`memexp.results.ResultsWriter` drops the rows
    past a checkpoint on resume).

    Raises:
        ValueError: appended rows whose columns differ from the file's header.
    """
    path = Path(path)
    if not rows:
        return
    header = ",".join(rows[0])
    lines = [",".join(_fmt(row[k]) for k in rows[0]) for row in rows]
    if append and path.exists():
        with path.open() as fh:
            first = fh.readline().rstrip("\n")
        if first != header:
            raise ValueError(f"{path} has columns {first!r}, the new rows {header!r}; start a new file")
        with path.open("a") as fh:
            fh.write("\n".join(lines) + "\n")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join([header, *lines]) + "\n")
