"""Expert-usage balance of MoME routing against random assignment, with and without key placement.

Run (the demo's backbone, facts and bank; ~2 minutes on 2 CPU cores once the backbone is cached)::

    python benchmarks/mome_balance.py --config configs/memexp/mome_demo.yaml

For each setting the module trains phase 1 (``phase1_epochs``) and starts phase 2 (one epoch), whose
start caches every fact's experts; the table compares that cache with random assignment (each fact
picks its ``heads * k`` experts uniformly: the formula of :func:`memexp.mome.expert_balance.random_assignment`
and a simulation). Columns: distinct experts, facts sharing >= 1 expert with another fact, facts whose
experts are all selected by one other fact, facts with no expert of their own, most facts on one expert.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lightning as L
import torch
import yaml

from memexp.data import FactsDataModule
from memexp.mome import MoMEConfig
from memexp.mome.expert_balance import random_assignment, simulate_random_assignment, usage_report
from memexp.mome.tuning import MoMETuning

COLUMNS = ("distinct_experts", "sharing_any", "sharing_all", "no_private", "max_usage")


def run(config: dict, balance_keys: bool) -> tuple[dict, int, int]:
    """Phase 1 + the start of phase 2; returns the cache's usage report, the facts and the slots per fact."""
    model_args = dict(config["model"]["init_args"])
    mome = MoMEConfig(**model_args.pop("mome"))
    L.seed_everything(config.get("seed_everything", 0), verbose=False)
    module = MoMETuning(**model_args, mome=mome, balance_keys=balance_keys)
    data = FactsDataModule(**config["data"]["init_args"])
    with tempfile.TemporaryDirectory() as tmp:
        trainer = L.Trainer(
            max_epochs=module.hparams.phase1_epochs + 1,
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            default_root_dir=tmp,
        )
        trainer.fit(module, data)
    fact_ids = torch.tensor([e.fact_id for e in data.train_examples])
    ids = module.cached_ids[fact_ids]  # (N, heads * k)
    return usage_report(ids, mome.num_experts), len(fact_ids), ids.shape[1]


def row(name: str, values: dict) -> str:
    cells = [f"{values['distinct_experts']:.0f}"]
    cells += [
        f"{100 * values[c]:.1f}%" if values[c] >= 1e-3 or values[c] == 0 else f"{values[c]:.1e}"
        for c in COLUMNS[1:4]
    ]
    cells.append(f"{values['max_usage']:.0f}" if "max_usage" in values else "–")
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/memexp/mome_demo.yaml")
    parser.add_argument("--trials", type=int, default=20, help="random assignments simulated")
    args = parser.parse_args()
    with open(args.config) as fh:
        config = yaml.safe_load(fh)
    mome = config["model"]["init_args"]["mome"]
    print(
        f"torch threads {torch.get_num_threads()}; {args.config}: E={mome['num_experts']}, k={mome['k']}, "
        f"heads={mome.get('heads', 1)}, {config['data']['init_args']['num_random_facts']} facts"
    )
    results = {}
    for balance in (False, True):
        t0 = time.perf_counter()
        results[balance] = run(config, balance)
        print(f"balance_keys={balance}: {time.perf_counter() - t0:.0f} s", flush=True)
    report, n, slots = results[False]
    e = mome["num_experts"]
    print(f"\n{n} facts x {slots} slots of {e} experts\n")
    head = (
        "routing",
        "distinct experts",
        "facts sharing any",
        "facts sharing all",
        "no own expert",
        "max on one",
    )
    print("| " + " | ".join(head) + " |")
    print("|---|---|---|---|---|---|")
    print(row("router, balance_keys false", report))
    print(row("router, balance_keys true (opt-in)", results[True][0]))
    print(row("random assignment (formula)", random_assignment(n, slots, e)))
    print(
        row(
            f"random assignment ({args.trials} simulations)",
            simulate_random_assignment(n, slots, e, args.trials),
        )
    )


if __name__ == "__main__":
    main()
