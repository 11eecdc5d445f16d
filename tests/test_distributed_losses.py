"""In-batch losses under a batch split across two gloo ranks equal the single process's loss and
gradients (the global batch's negatives, statistics and norms; :class:`RankShares`)."""

import pytest
import torch

from prismrec import losses

from tests.gloo_ranks import grad_rows, run_two_ranks

RANK_BODY = """
from tests.test_distributed_losses import TERMS, grad_rows, inputs

for name, term, suffix in [(n, t, suffix) for suffix in ("", "@1") for n, t in TERMS.items()]:
    mine, weight = distributed.shard(tuple(x[:1] if suffix else x for x in inputs()), env)
    assert losses.batch_shares().split == (not suffix)  # one row: replicated, not split
    mine = [x.detach().requires_grad_() for x in mine]
    value = term(*mine) * weight  # the trainer's weighting: this rank's share of the batch
    value.backward()
    total = distributed.allreduce_sum(value.detach(), env)
    grads = [None] * env.world_size
    torch.distributed.all_gather_object(grads, [grad_rows(x) for x in mine])
    if suffix:  # replicated: each rank holds 1/K of every row's gradient
        joined = [sum(torch.tensor(g[k]) for g in grads).tolist() for k in range(len(mine))]
    else:  # split: each rank holds its own rows' gradients
        joined = [sum((g[k] for g in grads), []) for k in range(len(mine))]
    result[name + suffix] = {"value": float(total), "grads": joined}
"""

B, D, TAU = 7, 5, 0.3  # 7 rows: shares of 4 and 3 (the gather pads the smaller one)


def inputs() -> list[torch.Tensor]:
    """Three row-aligned batch matrices (float64: the comparison is to rounding, 1e-12)."""
    g = torch.Generator().manual_seed(0)
    return [torch.randn(B, D, generator=g, dtype=torch.float64) for _ in range(3)]


TERMS = {
    "infonce": lambda p, q, k: losses.infonce(p, q, TAU),
    "rows_infonce": lambda p, q, k: losses.rows_infonce(p, q, (torch.arange(len(p)),), TAU),
    "joint_infonce": lambda p, q, k: losses.joint_infonce(torch.stack([p, k]), q, TAU),
    "anchored_a3_gated": lambda p, q, k: losses.anchored_infonce(torch.stack([p, k]), q, (torch.arange(len(p)),),
                                                                 TAU, "A3"),
    # each row twice, as distinct rows with counts (SIGER's batches)
    "rows_infonce_counted": lambda p, q, k: losses.rows_infonce(
        p, q, (losses.counted_rows(torch.arange(len(p)).repeat_interleave(2)),), TAU),
    "anchored_a2_counted": lambda p, q, k: losses.anchored_infonce(
        torch.stack([p, k]), q, (losses.counted_rows(torch.arange(len(p)).repeat_interleave(2)),), TAU, "A2"),
    "entity_softmax": lambda p, q, k: losses.entity_weighted_infonce(p, q, TAU, "softmax", -1, 0.5),
    "entity_linear": lambda p, q, k: losses.entity_weighted_infonce(p, q, TAU, "linear", 1, 0.5),
    # distinct rows standing for 1, 2 or 3 entities each (EGRA's batches)
    "entity_softmax_counted": lambda p, q, k: losses.entity_weighted_infonce(p, q, TAU, "softmax", -1, 0.5,
                                                                             counts=_counts(p)),
    "entity_linear_counted": lambda p, q, k: losses.entity_weighted_infonce(p, q, TAU, "linear", 1, 0.5,
                                                                            counts=_counts(p)),
    "emb_norm": lambda p, q, k: losses.emb_norm(p, q, k),
    "half_sq_and_bpr": lambda p, q, k: losses.half_sq(p, q, k) + losses.bpr_loss(p, q, k),
    "batch_sum": lambda p, q, k: losses.batch_sum(losses.infonce_rows(p, q, TAU), len(p)),
}


def _counts(rows: torch.Tensor) -> torch.Tensor:
    """How many entities each of the batch's rows (found among ``inputs()[0]``) stands for: 1 to 3,
    each share's total twice its rows (the trainer weighs a share by its rows)."""
    at = (rows.detach().unsqueeze(1) == inputs()[0]).all(dim=2).int().argmax(dim=1)
    return torch.tensor([1, 3, 2, 2, 3, 1, 2]).index_select(0, at)


def _single() -> dict:
    """Every term on the 7-row batch, then (``@1``) on its first row alone."""
    result = {}
    for suffix in ("", "@1"):
        for name, term in TERMS.items():
            rows = [(x[:1] if suffix else x).requires_grad_() for x in inputs()]
            value = term(*rows)
            value.backward()
            result[name + suffix] = {"value": float(value.detach()), "grads": [grad_rows(x) for x in rows]}
    return result


def test_in_batch_losses_over_two_gloo_ranks_equal_one_process(tmp_path):
    two, one = run_two_ranks(RANK_BODY, tmp_path), _single()
    assert two.keys() == one.keys()
    for name in one:
        assert two[name]["value"] == pytest.approx(one[name]["value"], abs=1e-12), name
        for g2, g1 in zip(two[name]["grads"], one[name]["grads"]):
            assert torch.allclose(torch.tensor(g2), torch.tensor(g1), atol=1e-12), name


def test_a_batch_smaller_than_the_ranks_is_replicated_at_a_share_of_the_weight():
    from prismrec.train import distributed
    from prismrec.train.distributed import DistEnv

    batch = tuple(torch.arange(2) + k for k in range(3))
    for rank in range(3):
        mine, weight = distributed.shard(batch, DistEnv(rank, 3, rank))
        assert mine == batch and weight == pytest.approx(1 / 3)


def test_per_share_negatives_differ_from_the_global_batch():
    """What the shares fix: InfoNCE over two halves scored apart is not the whole batch's."""
    p, q, _ = inputs()
    halves = (losses.infonce(p[:4], q[:4], TAU) * 4 + losses.infonce(p[4:], q[4:], TAU) * 3) / 7
    assert abs(float(halves) - float(losses.infonce(p, q, TAU))) > 1e-3


def test_one_process_uses_no_shares_and_reset_restores_it():
    assert not losses.batch_shares().split

    class Marked(losses.BatchShares):
        split = True

        def gather(self, rows):
            return torch.cat([rows, rows.detach()]), 0  # a fake second share: a copy of this one

    p, q, _ = inputs()
    try:
        losses.use_batch_shares(Marked())
        doubled = losses.infonce(p, q, TAU)
    finally:
        losses.use_batch_shares(None)
    assert not losses.batch_shares().split
    # every negative counted twice: log 2 more per row than the single batch
    assert float(doubled) == pytest.approx(float(losses.infonce(p, q, TAU)) + torch.log(torch.tensor(2.0)).item())
