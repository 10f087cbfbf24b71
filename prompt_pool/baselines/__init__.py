"""Baselines that plug into the same runner, one per family of continual learning.

- :class:`FineTune`: sequential fine-tuning, head only (``train_backbone=False``) or whole model;
  with ``train_mask=True`` and a frozen backbone it is the paper's "frozen backbone + linear head";
  with ``buffer_per_class > 0`` it is experience replay; with ``data.joint=True`` the upper bound.
- :class:`EWC`: parameter regularisation (elastic weight consolidation).
- :class:`LwF`: distillation (learning without forgetting).
"""

from prompt_pool.baselines.ewc import EWC
from prompt_pool.baselines.finetune import FineTune
from prompt_pool.baselines.lwf import LwF

__all__ = ["EWC", "FineTune", "LwF"]
