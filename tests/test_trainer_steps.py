"""train_epoch's bookkeeping changes no bit of training: its parameters after an epoch equal
those of the plain loop (terms summed one by one, backward, fused-Adam step), and its logged
losses are the per-batch terms' means."""

from __future__ import annotations

import pytest
import torch

from prismrec.data import BPRSampler
from prismrec.experiment.config import resolve_config
from prismrec.models import get_model
from prismrec.train.trainer import seed_everything, train_epoch


def _setup(name, data):
    cfg = resolve_config(name, data.name, {"batch_size": 64})
    seed_everything(3)
    model = get_model(name)(data, cfg.params)
    sampler = BPRSampler(data.train, 64, cfg.train.negative_pool, seed=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01, fused=True)
    model.train()
    torch.manual_seed(9)  # the models' own draws (dropout, noise) from here on
    return model, sampler, optimizer


@pytest.mark.parametrize("name", ["bpr", "vbpr", "bm3", "lightgcn", "mgcn"])
def test_an_epoch_trains_as_the_plain_loop_bit_for_bit(planted, name):
    model, sampler, optimizer = _setup(name, planted)
    row = train_epoch(model, sampler, optimizer, 0, "cpu")
    got = {k: v.detach().clone() for k, v in model.state_dict().items()}

    plain, sampler, optimizer = _setup(name, planted)
    sums, batches = {}, 0
    for batch in sampler.epoch():
        terms = plain.batch_loss(batch)
        total = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        batches += 1
    assert batches > 3 and len(sums) >= 2
    for k, v in plain.state_dict().items():
        assert torch.equal(got[k], v), k
    assert {k[5:]: v for k, v in row.items() if k.startswith("loss_")} == {k: v / batches for k, v in sums.items()}
    assert row["loss"] == sum(row[f"loss_{k}"] for k in sums)
