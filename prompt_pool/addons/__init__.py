"""Continual-learning add-ons (Lightning callbacks that combine with any learner): :class:`Replay`,
:class:`EWC`, :class:`LwF`, :class:`PromptUsage`; the hooks they implement: :class:`ContinualAddon`."""

from prompt_pool.addons.base import ContinualAddon, addons_of
from prompt_pool.addons.ewc import EWC
from prompt_pool.addons.lwf import LwF
from prompt_pool.addons.replay import Replay
from prompt_pool.addons.usage import PromptUsage

__all__ = ["EWC", "ContinualAddon", "LwF", "PromptUsage", "Replay", "addons_of"]
