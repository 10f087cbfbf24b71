"""L2P (Learning to Prompt): a key-value prompt pool on a frozen timm ViT over continual task sequences.

Files: ``backbone`` (frozen ViT, query, prompted forward, per-layer features), ``selection`` (top-N,
vote, task mask, eq. 4), ``pool`` (prompts, keys, pull constraint), ``l2p`` (the L2P learner),
``learner`` (shared Lightning module), ``heads`` (decoding heads on per-layer class logits),
``baselines`` (fine-tuning), ``addons`` (replay, EWC, LwF, prompt usage: callbacks for any learner),
``datasets`` / ``sources`` (registered by name) / ``task_split`` / ``data_config`` / ``datamodule`` (task
sequences), ``runner`` (task loop, one A[i, t] per head, run folder, resume), ``metrics``, ``plots``,
``pretrain`` (the offline tiny-ViT recipe), ``cli`` (``prompt-pool``, fast ``--help``) and
``lightning_cli`` (its LightningCLI).

The names below are imported on first use, so that ``prompt-pool --help`` needs neither torch nor
Lightning.
"""

from __future__ import annotations

from decoding.lazy_exports import lazy_exports

_EXPORTS = {
    "L2P": "prompt_pool.l2p",
    "PoolConfig": "prompt_pool.pool",
    "ContinualLearner": "prompt_pool.learner",
    "PromptPool": "prompt_pool.pool",
    "RunnerConfig": "prompt_pool.runner",
    "Selection": "prompt_pool.pool",
    "SequenceResult": "prompt_pool.runner",
    "TaskSequenceDataModule": "prompt_pool.datamodule",
    "TaskSequenceRunner": "prompt_pool.runner",
    "ViTBackbone": "prompt_pool.backbone",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
