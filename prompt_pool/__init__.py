"""L2P (Learning to Prompt): a key-value prompt pool on a frozen timm ViT over continual task sequences.

Files: ``backbone`` (frozen ViT, query, prompted forward, per-layer features), ``selection`` (top-N,
vote, task mask, eq. 4), ``pool`` (prompts, keys, pull constraint), ``l2p`` (the L2P learner),
``learner`` (shared Lightning module), ``baselines`` (fine-tuning, replay, EWC, LwF), ``datasets`` /
``tasks`` / ``datamodule`` (task sequences), ``runner`` (task loop, A[i, t], resume), ``metrics``,
``plots``, ``pretrain`` (the offline tiny-ViT recipe), ``cli`` (``prompt-pool fit``).
"""

from prompt_pool.backbone import ViTBackbone
from prompt_pool.datamodule import TaskSequenceDataModule
from prompt_pool.l2p import L2P
from prompt_pool.learner import ContinualLearner
from prompt_pool.pool import PromptPool, Selection
from prompt_pool.runner import RunnerConfig, SequenceResult, TaskSequenceRunner

__all__ = [
    "L2P",
    "ContinualLearner",
    "PromptPool",
    "RunnerConfig",
    "Selection",
    "SequenceResult",
    "TaskSequenceDataModule",
    "TaskSequenceRunner",
    "ViTBackbone",
]
