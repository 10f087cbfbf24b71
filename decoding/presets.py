"""Per-task defaults of the references: heads differ per task (docs/algorithms/decoding.md).

=============  =============================  ==========================  ============
task           SLED (rate, scale, LB, op_T)   DoLa                        score
=============  =============================  ==========================  ============
generation     2, 10, -1000, 1                'high', relative_top 0.1    --
gsm8k          2, 10, -1000, 1                'low',  relative_top 0.1    --
strategyqa     2, 10, -1000, 1                'low',  relative_top 0.1    --
truthfulqa-mc  2, 50, -100, 10                'high', relative_top 0.0    raw logits
factor         2, 10, -2500, 1                'low',  relative_top 0.1    log_softmax
=============  =============================  ==========================  ============

The original DoLa repo generates with repetition penalty 1.2 (the baseline with 1.0); the SLED
scripts use 1.0. ``post_softmax`` is the MC scoring mode: TruthfulQA sums raw (evolved / contrasted)
logits, FACTOR log-probabilities (and DoLa log_softmaxes its contrast again there).
"""

from __future__ import annotations

from decoding.head import Head
from decoding.head_spec import make_head

_GEN_SLED = {"evolution_rate": 2.0, "evolution_scale": 10, "evolution_lower_bound": -1000.0, "op_T": 1}

TASKS: dict[str, dict] = {
    "generation": {"sled": _GEN_SLED, "dola": {"dola_layers": "high", "relative_top": 0.1}},
    "gsm8k": {"sled": _GEN_SLED, "dola": {"dola_layers": "low", "relative_top": 0.1}},
    "strategyqa": {"sled": _GEN_SLED, "dola": {"dola_layers": "low", "relative_top": 0.1}},
    "truthfulqa-mc": {
        "sled": {"evolution_rate": 2.0, "evolution_scale": 50, "evolution_lower_bound": -100.0, "op_T": 10},
        "dola": {"dola_layers": "high", "relative_top": 0.0},
        "post_softmax": False,
    },
    "factor": {
        "sled": {"evolution_rate": 2.0, "evolution_scale": 10, "evolution_lower_bound": -2500.0, "op_T": 1},
        "dola": {"dola_layers": "low", "relative_top": 0.1, "post_softmax": True},
        "post_softmax": True,
    },
}


def task_defaults(task: str) -> dict:
    """The defaults of ``task`` (see the table above)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[task]


def head_for_task(name: str, task: str = "generation", inner: str = "greedy", **overrides) -> Head:
    """Build head ``name`` with ``task``'s defaults; ``overrides`` (not None) win.

    For ``dera`` the options are ``lam`` plus the inner head's (``inner`` = greedy/sled/dola).
    """
    defaults = task_defaults(task)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if name == "dera":
        lam = overrides.pop("lam", 1.0)
        return make_head("dera", lam=lam, head=head_for_task(inner, task, **overrides))
    options = {**defaults.get(name, {}), **overrides}
    return make_head(name, **options)
