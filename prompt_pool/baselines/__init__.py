"""Baselines that plug into the same runner.

- :class:`FineTune`: sequential fine-tuning, head only (``train_backbone=False``) or whole model;
  with ``train_mask=True`` and a frozen backbone it is the paper's "frozen backbone + linear head";
  with ``data.joint=True`` the upper bound.

Rehearsal (ER), EWC and LwF are add-ons (:mod:`prompt_pool.addons`) that combine with any learner:
``FineTune`` + ``EWC`` is the EWC baseline, ``L2P`` + ``Replay`` is L2P-R.
"""

from prompt_pool.baselines.finetune import FineTune

__all__ = ["FineTune"]
