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


@dataclass(frozen=True)
class PoolConfig:
    """The prompt pool's settings (YAML: ``model.init_args.pool``; docs/algorithms/l2p.md)."""

    pool_size: int = 10
    """M, the number of prompts (and keys)."""
    prompt_length: int = 5
    """Lp, the tokens of one prompt."""
    top_n: int = 5
    """N, the prompts selected per input."""
    prompt_init: PromptInit = "uniform_small"
    """Prompts and keys: ``uniform_small`` U[0, 0.01) (official JAX) or ``uniform`` U[-1, 1] (l2p-pytorch)."""
    batchwise_vote: bool = False
    """Give every sample the batch-majority ids (both codebases; a reproduction flag, off by default)."""
    use_prompt_mask: bool = False
    """In training, task t uses ids [tN, (t+1)N) (the code's substitute for eq. 4); off when (t+1)N > M."""
    shared_prompt_pool: bool = False
    """With ``use_prompt_mask``: copy the previous task's prompts into the new slice at task start."""
    shared_prompt_key: bool = False
    """With ``shared_prompt_pool``: copy the keys too."""
    diversity: bool = False
    """The paper's eq. 4 frequency penalty in training (never at test time)."""
    diversity_smoothing: bool = False
    """Use h + 1/M in eq. 4."""
    pull_on_diversity_ids: bool = False
    """Pull the eq. 4 keys instead of the eq. 3 keys (paper eq. 5 says eq. 3)."""

    def check(self) -> None:
        """Raise :class:`UserError` for sizes out of range (M >= N >= 1, Lp >= 1) or clashing rules."""
        for name in ("pool_size", "prompt_length", "top_n"):
            value = getattr(self, name)
            if value < 1:
                raise UserError(
                    f"{name} must be >= 1, got {value}; "
                    f"pass --model.init_args.pool.{name} <positive integer>."
                )
        if self.pool_size < self.top_n:
            raise UserError(
                f"pool_size {self.pool_size} < top_n {self.top_n}: the pool cannot supply "
                f"{self.top_n} prompts; pass --model.init_args.pool.pool_size {self.top_n} or more, "
                "or a lower --model.init_args.pool.top_n."
            )
        if self.use_prompt_mask and self.diversity:
            raise UserError(
                "use_prompt_mask and diversity are alternatives (the code's and the paper's); set one false."
            )
        if self.prompt_init not in ("uniform_small", "uniform"):
            raise UserError(
                f"unknown prompt_init {self.prompt_init!r}; use 'uniform_small' (JAX) or 'uniform' "
                "(l2p-pytorch)."
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
        config: the pool's settings (sizes, init, selection rules).
        embed_dim: D, the backbone width.
        seed: seed of the initialisation (independent of the global RNG).
    """

    def __init__(self, config: PoolConfig, embed_dim: int, seed: int = 0) -> None:
        super().__init__()
        config.check()
        self.config = config
        pool_size, prompt_length, top_n = config.pool_size, config.prompt_length, config.top_n
        self.pool_size, self.prompt_length, self.top_n = pool_size, prompt_length, top_n
        self.batchwise_vote, self.use_prompt_mask = config.batchwise_vote, config.use_prompt_mask
        self.shared_prompt_pool, self.shared_prompt_key = config.shared_prompt_pool, config.shared_prompt_key
        self.diversity, self.diversity_smoothing = config.diversity, config.diversity_smoothing
        self.pull_on_diversity_ids = config.pull_on_diversity_ids
        g = torch.Generator().manual_seed(seed)
        if config.prompt_init == "uniform_small":
            p, k = (
                torch.rand(pool_size, prompt_length, embed_dim, generator=g) * 0.01,
                torch.rand(pool_size, embed_dim, generator=g) * 0.01,
            )
        else:  # "uniform" (checked above)
            p, k = (
                torch.rand(pool_size, prompt_length, embed_dim, generator=g) * 2 - 1,
                torch.rand(pool_size, embed_dim, generator=g) * 2 - 1,
            )
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
