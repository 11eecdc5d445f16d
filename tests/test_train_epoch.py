"""train_epoch's host copies: loss terms copied in groups (as on a GPU) log and stop exactly as per batch."""

import math

import pytest
import torch

import prismrec.train.trainer as trainer
from prismrec.errors import TrainingDiverged


class Batches:
    def __init__(self, n: int) -> None:
        self.n = n

    def epoch(self):
        for b in range(self.n):
            yield (torch.full((4,), b), torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long))


class Toy(torch.nn.Module):
    """Two loss terms per batch, the second one blowing up at ``bad_batch``."""

    def __init__(self, bad_batch: int | None = None) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([0.3, -0.2]))
        self.bad_batch = bad_batch

    def batch_gradients(self, batch):
        return None  # no closed form: the trainer differentiates batch_loss

    def batch_loss(self, batch):
        b = int(batch[0][0])
        second = (self.w[1] ** 2) * (b + 1) / 7
        if b == self.bad_batch:
            second = second * math.inf
        return {"bpr": torch.nn.functional.softplus(self.w[0] * (b - 2.5)), "reg": second}


def run(interval: int, monkeypatch, bad_batch=None) -> dict:
    monkeypatch.setattr(trainer, "_guard_interval", lambda device: interval)
    torch.manual_seed(0)
    model = Toy(bad_batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    row = trainer.train_epoch(model, Batches(10), optimizer, 0, "cpu")
    return {**{k: v for k, v in row.items() if k.startswith("loss")}, "w": model.w.detach().tolist()}


def test_grouped_host_copies_log_the_same_losses_bit_for_bit(monkeypatch):
    per_batch = run(1, monkeypatch)
    grouped = run(4, monkeypatch)  # 10 batches: groups of 4, 4 and the 2 left at the epoch's end
    assert grouped == per_batch
    assert per_batch["loss"] == per_batch["loss_bpr"] + per_batch["loss_reg"] and per_batch["loss_reg"] > 0


@pytest.mark.parametrize("interval", [1, 4])
def test_a_diverged_batch_is_named_however_late_it_is_seen(monkeypatch, interval):
    with pytest.raises(TrainingDiverged, match=r"loss term\(s\) reg became non-finite at epoch 0, batch 5"):
        run(interval, monkeypatch, bad_batch=5)
