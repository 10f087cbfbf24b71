"""Checkpoints sized to what matters: best.ckpt holds weights only, last.ckpt the optimizer moments of the
experts ever selected (all-zero rows dropped, restored bit for bit), each written at most once per
evaluation, and a run resumed from last.ckpt ends exactly where the uninterrupted run ends."""

from __future__ import annotations

import os

import lightning as L
import torch

import memexp.checkpointing as checkpointing
from memexp.checkpointing import RunCheckpoint
from memexp.compact_state import MARK, compact, compact_optimizer_states, expand, expand_optimizer_states


def test_compact_round_trip_is_bitwise(tmp_path):
    t = torch.zeros(40, 3, 2)
    t[[1, 7, 30]] = torch.randn(3, 3, 2)
    t[9, 0, 0] = -0.0  # a row of zeros but one negative zero: its bits are not zero, so it is kept
    dense = torch.randn(10, 4)  # no zero rows: stored as it is
    state = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": t, "other": [t, dense]}}, "param_groups": []}
    packed = compact(state)
    assert packed["state"][0]["exp_avg"][MARK] is True
    assert packed["state"][0]["exp_avg"]["rows"].tolist() == [1, 7, 9, 30]
    assert packed["state"][0]["other"][1] is dense
    torch.save(packed, tmp_path / "s.pt")
    again = expand(torch.load(tmp_path / "s.pt", weights_only=True))  # tensors and plain values only
    restored = again["state"][0]["exp_avg"]
    assert torch.equal(restored.view(torch.int32), t.view(torch.int32))  # -0.0 included
    assert torch.equal(again["state"][0]["other"][0], t) and torch.equal(again["state"][0]["other"][1], dense)
    assert state["state"][0]["exp_avg"] is t  # the live state was not modified
    checkpoint = {"optimizer_states": [state]}
    compact_optimizer_states(checkpoint)
    expand_optimizer_states(checkpoint)
    assert torch.equal(checkpoint["optimizer_states"][0]["state"][0]["exp_avg"], t)


class CountWrites:
    """Wraps ``atomic_torch_save`` in memexp.checkpointing: (file name, bytes, epoch) of every write."""

    def __init__(self, monkeypatch) -> None:
        self.writes: list[tuple[str, int, int]] = []
        original = checkpointing.atomic_torch_save

        def save(obj, path):
            original(obj, path)
            self.writes.append((os.path.basename(path), os.path.getsize(path), obj["epoch"]))

        monkeypatch.setattr(checkpointing, "atomic_torch_save", save)


def trainer(tmp_path, name: str, epochs: int) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=1,
        default_root_dir=str(tmp_path / name),
        callbacks=[RunCheckpoint(monitor="val/answer_nll", mode="min")],
    )


def trained_state(module) -> dict[str, torch.Tensor]:
    buffers = {n: getattr(module, n).clone() for n in ("cached_ids", "cached_weights", "memorised")}
    return {n: p.detach().clone() for n, p in module.model.named_parameters()} | buffers


def test_compact_last_best_weights_only_and_resume_equals_the_uninterrupted_run(
    tiny_llama_dir, tmp_path, monkeypatch
):
    from test_mome_module import make_data, make_module

    counter = CountWrites(monkeypatch)
    whole = make_module(tiny_llama_dir, phase1_epochs=2)  # epochs 0, 1: phase 1; epoch 2: phase 2
    trainer(tmp_path, "whole", 3).fit(whole, make_data(tiny_llama_dir, n=8))
    writes = list(counter.writes)
    # the same run stopped after epoch 0 (mid phase 1) and resumed from last.ckpt
    trainer(tmp_path, "cut", 1).fit(
        make_module(tiny_llama_dir, phase1_epochs=2), make_data(tiny_llama_dir, n=8)
    )
    resumed = make_module(tiny_llama_dir, phase1_epochs=2)
    last = tmp_path / "cut" / "checkpoints" / "last.ckpt"
    trainer(tmp_path, "cut", 3).fit(resumed, make_data(tiny_llama_dir, n=8), ckpt_path=str(last))
    a, b = trained_state(whole), trained_state(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name

    folder = tmp_path / "whole" / "checkpoints"
    last = torch.load(folder / "last.ckpt", weights_only=True)
    best = torch.load(folder / "best.ckpt", weights_only=True)
    assert "optimizer_states" not in best and "callbacks" not in best  # weights only
    assert best["state_dict"].keys() == last["state_dict"].keys()
    assert not any(".base." in k or "embed_tokens" in k for k in best["state_dict"])  # backbone not copied
    num_experts = whole.model.config.num_experts
    for moments in last["optimizer_states"][0]["state"].values():  # SparseAdam over the expert tables
        for name in ("exp_avg", "exp_avg_sq"):
            packed = moments[name]
            assert packed[MARK] is True and packed["shape"][0] == num_experts
            assert 0 < packed["rows"].numel() < num_experts  # only experts ever selected
    # each file at most once per evaluation (3 evaluations: epochs 0, 1, 2)
    for name in ("last.ckpt", "best.ckpt"):
        epochs = [epoch for file, _, epoch in writes if file == name]
        assert 1 <= len(epochs) == len(set(epochs)) <= 3, (name, epochs)
    sizes = {file: size for file, size, _ in writes}
    assert sizes["best.ckpt"] < sizes["last.ckpt"]
