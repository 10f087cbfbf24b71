"""EpochBar: one bar over the epochs of a Lightning fit, the loss beside it."""

from __future__ import annotations

import lightning as L
import torch

from experiments.progress import EpochBar


class _Tiny(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.w(batch[0]).pow(2).mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_epoch_bar_counts_epochs(capsys):
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2)), batch_size=4)
    trainer = L.Trainer(
        max_epochs=3, callbacks=[EpochBar("base")], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )  # fmt: skip
    trainer.fit(_Tiny(), data)
    err = capsys.readouterr().err
    assert "base" in err and "3/3" in err and "loss=" in err
