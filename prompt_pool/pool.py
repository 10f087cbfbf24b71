"""The L2P key-value prompt pool: M prompts of length Lp, their keys, selection and the pull constraint.

::

    q (B,D) --cosine--> S (B,M) --top-N--> I (B,N) --[vote]--[eq.4 | task mask]--> ids (B,N)
    prompts[ids] -> (B, N*Lp, D)         pull = mean_b sum_{j in ids_b} n(q_b).n(k_j)

The loss uses ``- pull_coef * pull`` (similarity is maximised; docs/algorithms/l2p.md, 'One training step').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from decoding.errors import UserError
from prompt_pool.selection import (
    batch_vote,
    cosine_similarity,
    diversity_top_n,
    l2_normalize,
    stable_top_n,
    task_prompt_ids,
)

PromptInit = Literal["uniform_small", "uniform"]


def check_pool_settings(
    pool_size: int, prompt_length: int, top_n: int, use_prompt_mask: bool = False, diversity: bool = False
) -> None:
    """Raise :class:`UserError` for pool sizes out of range (M >= N >= 1, Lp >= 1) or clashing rules."""
    for name, value in (("pool_size", pool_size), ("prompt_length", prompt_length), ("top_n", top_n)):
        if value < 1:
            raise UserError(
                f"{name} must be >= 1, got {value}; pass --model.init_args.{name} <positive integer>."
            )
    if pool_size < top_n:
        raise UserError(
            f"pool_size {pool_size} < top_n {top_n}: the pool cannot supply {top_n} prompts; "
            f"pass --model.init_args.pool_size {top_n} or more, or a lower --model.init_args.top_n."
        )
    if use_prompt_mask and diversity:
        raise UserError(
            "use_prompt_mask and diversity are alternatives (the code's and the paper's); set one false."
        )


@dataclass
class Selection:
    """Result of one pool lookup."""

    ids: Tensor  # (B, N) ids whose prompts are prepended
    prompts: Tensor  # (B, N*Lp, D)
    pull: Tensor  # () mean over the batch of the summed cosine between query and pulled keys
    sim: Tensor  # (B, M) cosine similarities


class PromptPool(nn.Module):
    """Key-value prompt pool.

    Args:
        pool_size: M, number of prompts (and keys).
        prompt_length: Lp, tokens per prompt.
        top_n: N, prompts selected per input.
        embed_dim: D, the backbone width.
        init: ``uniform_small`` = U[0, 0.01) (official JAX, Flax ``uniform()``) or ``uniform`` = U[-1, 1]
            (l2p-pytorch); applied to prompts and keys.
        batchwise_vote: give every sample the batch-majority ids (reproduction flag; both codebases use it,
            per-sample selection is the default: the test-time vote assumes single-task batches).
        use_prompt_mask: in training, task t uses ids [tN, (t+1)N) (the code's substitute for eq. 4);
            silently off when (t+1)N > M, as in the official code.
        shared_prompt_pool: with ``use_prompt_mask``, copy the previous task's prompts into the new slice
            when a task starts; ``shared_prompt_key`` copies the keys too.
        diversity: the paper's eq. 4 frequency penalty in training (never at test time).
        diversity_smoothing: use h + 1/M in eq. 4.
        pull_on_diversity_ids: pull the eq. 4 keys instead of the eq. 3 keys (paper eq. 5 says eq. 3).
        seed: seed of the initialisation (independent of the global RNG).
    """

    def __init__(
        self,
        pool_size: int = 10,
        prompt_length: int = 5,
        top_n: int = 5,
        embed_dim: int = 768,
        init: PromptInit = "uniform_small",
        batchwise_vote: bool = False,
        use_prompt_mask: bool = False,
        shared_prompt_pool: bool = False,
        shared_prompt_key: bool = False,
        diversity: bool = False,
        diversity_smoothing: bool = False,
        pull_on_diversity_ids: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_pool_settings(pool_size, prompt_length, top_n, use_prompt_mask, diversity)
        self.pool_size, self.prompt_length, self.top_n = pool_size, prompt_length, top_n
        self.batchwise_vote, self.use_prompt_mask = batchwise_vote, use_prompt_mask
        self.shared_prompt_pool, self.shared_prompt_key = shared_prompt_pool, shared_prompt_key
        self.diversity, self.diversity_smoothing = diversity, diversity_smoothing
        self.pull_on_diversity_ids = pull_on_diversity_ids
        g = torch.Generator().manual_seed(seed)
        if init == "uniform_small":
            p, k = (
                torch.rand(pool_size, prompt_length, embed_dim, generator=g) * 0.01,
                torch.rand(pool_size, embed_dim, generator=g) * 0.01,
            )
        elif init == "uniform":
            p, k = (
                torch.rand(pool_size, prompt_length, embed_dim, generator=g) * 2 - 1,
                torch.rand(pool_size, embed_dim, generator=g) * 2 - 1,
            )
        else:
            raise UserError(f"unknown init {init!r}; use 'uniform_small' (JAX) or 'uniform' (l2p-pytorch).")
        self.prompts = nn.Parameter(p)  # (M, Lp, D)
        self.keys = nn.Parameter(k)  # (M, D)
        self.register_buffer("prev_counts", torch.zeros(pool_size, dtype=torch.long))  # tasks < t
        self.register_buffer("task_counts", torch.zeros(pool_size, dtype=torch.long))  # task t (training)
        self.register_buffer("current_task", torch.zeros((), dtype=torch.long))

    @property
    def task(self) -> int:
        """Index of the task being trained."""
        return int(self.current_task)

    @property
    def num_prompt_tokens(self) -> int:
        """N * Lp, the number of tokens prepended to every input."""
        return self.top_n * self.prompt_length

    def begin_task(self, task: int) -> None:
        """Close the previous task's frequency table and apply the shared-prompt copy (eq. 4, task mask)."""
        if task != self.task:
            self.prev_counts += self.task_counts
            self.task_counts.zero_()
            self.current_task.fill_(task)
        n = self.top_n
        if self.use_prompt_mask and self.shared_prompt_pool and task > 0 and (task + 1) * n <= self.pool_size:
            with torch.no_grad():
                prev, cur = slice((task - 1) * n, task * n), slice(task * n, (task + 1) * n)
                self.prompts[cur] = self.prompts[prev]
                if self.shared_prompt_key:
                    self.keys[cur] = self.keys[prev]

    def select_ids(self, sim: Tensor, training: bool) -> tuple[Tensor, Tensor]:
        """(ids used for the prompts, ids whose keys are pulled), both (B, N)."""
        ids = stable_top_n(sim, self.top_n)  # (B, N), eq. 3
        if self.batchwise_vote:
            ids = batch_vote(ids, self.pool_size, self.top_n)
        pulled = ids
        if training and self.use_prompt_mask:
            mask = task_prompt_ids(self.task, self.top_n, self.pool_size, sim.device)
            if mask is not None:
                ids = pulled = mask[None].expand(sim.shape[0], -1)
        elif training and self.diversity:
            div = diversity_top_n(sim, self.prev_counts, self.top_n, self.diversity_smoothing)
            if self.batchwise_vote:
                div = batch_vote(div, self.pool_size, self.top_n)
            ids = div
            if self.pull_on_diversity_ids:
                pulled = div
        return ids, pulled

    def forward(self, query: Tensor) -> Selection:
        """Select prompts for a batch of queries (B, D) and compute the pull term."""
        query = query.detach()
        sim = cosine_similarity(query, self.keys)  # (B, M); grads flow to keys only
        with torch.no_grad():
            ids, pulled = self.select_ids(sim, self.training)
        if self.training:
            self.task_counts += torch.bincount(ids.flatten(), minlength=self.pool_size)
        prompts = self.prompts[ids].flatten(1, 2)  # (B, N, Lp, D) -> (B, N*Lp, D)
        pulled_keys = l2_normalize(self.keys)[pulled]  # (B, N, D)
        pull = (l2_normalize(query)[:, None, :] * pulled_keys).sum(dim=(-1, -2)).mean()
        return Selection(ids=ids, prompts=prompts, pull=pull, sim=sim)
