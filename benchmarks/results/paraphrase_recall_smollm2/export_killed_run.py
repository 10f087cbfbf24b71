"""Write the ``mome/`` folder of a MoME run stopped before the end of ``fit``, from its last evaluation.

The ``aug`` run never reached 0% (one training rewording snaps to another fact) and was stopped after
its epoch-109 evaluation; this exports ``checkpoints/last.ckpt`` as ``fit`` would have::

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/results/paraphrase_recall_smollm2/export_killed_run.py \\
        runs/sm/aug 198,49,42
"""

import sys

import torch

from memexp.mome import MoMEConfig
from memexp.mome.checkpoint import save_mome
from memexp.mome.tuning import MoMETuning


def main(run: str, question_end: list[int]) -> None:
    """Load ``RUN/checkpoints/last.ckpt`` into a fresh ``MoMETuning`` and save ``RUN/mome``.

    Args:
        run: the run folder.
        question_end: the ids that end every trained prompt (``fit`` records them at its start; here
            they are those of the plain run's ``mome/config.json``, same tokenizer and template).
    """
    ck = torch.load(f"{run}/checkpoints/last.ckpt", weights_only=False, map_location="cpu")
    hp = {k: v for k, v in ck["hyper_parameters"].items() if not k.startswith("_")}
    hp["mome"] = MoMEConfig(**hp["mome"])
    module = MoMETuning(**hp)
    for name in ("cached_ids", "cached_weights", "memorised"):
        setattr(module, name, torch.empty_like(ck["state_dict"][name]))
    module.model.freeze_router()
    module.model.config.question_end = question_end
    _, unexpected = module.load_state_dict(ck["state_dict"], strict=False)
    assert not unexpected, unexpected
    router = module.model.router
    router.index.config = module.phase2_index
    router.index.build(router.keys.weight)
    print("epoch", ck["epoch"], "stored fact queries", tuple(router.gate.queries.shape))
    save_mome(module.model, f"{run}/mome", overwrite=True, backbone_name=hp["backbone"])


if __name__ == "__main__":
    main(sys.argv[1], [int(i) for i in sys.argv[2].split(",")])
