import numpy as np
import pytest
import scipy.sparse as sp
import torch

from prismrec.eval import Evaluator, popularity_groups, rank_metrics, ranked_topk
from prismrec.recommender import Output
from tests.reference.metrics_ref import reference_metrics

KS = (1, 5, 10, 20)


def random_case(seed, n_users=60, n_items=40, p_truth=0.08, p_excl=0.2, ties=False):
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=(n_users, n_items)).astype(np.float32)
    if ties:  # few distinct values: many ties, including at the top-K boundary
        scores = np.round(scores).astype(np.float32)
    exclude = rng.random((n_users, n_items)) < p_excl
    truth = (rng.random((n_users, n_items)) < p_truth) & ~exclude
    truth[::7] = False  # some users without truth are skipped
    return scores, truth, exclude


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("ties", [False, True])
def test_rank_metrics_match_bruteforce_reference(seed, ties):
    scores, truth, exclude = random_case(seed, ties=ties)
    got = rank_metrics(torch.from_numpy(scores), sp.csr_matrix(truth), sp.csr_matrix(exclude), ks=KS)
    want = reference_metrics(scores, truth, exclude, KS)
    assert got["users"] == want["users"]
    for name, value in want.items():
        assert abs(got[name] - value) < 1e-6, name


def test_rank_metrics_when_k_exceeds_unmasked_items():
    scores, truth, exclude = random_case(1, n_items=12, p_excl=0.6, p_truth=0.2)
    got = rank_metrics(torch.from_numpy(scores), sp.csr_matrix(truth), sp.csr_matrix(exclude), ks=(5, 10))
    want = reference_metrics(scores, truth, exclude, (5, 10))
    for name, value in want.items():
        assert abs(got[name] - value) < 1e-6, name


def test_hand_computed_single_user():
    # ranking: item 3 (0.9), 1 (0.8), 0 (0.5, masked -> last), 2 (0.1); truth {1, 2}
    scores = torch.tensor([[0.5, 0.8, 0.1, 0.9]])
    truth = sp.csr_matrix(np.array([[0, 1, 1, 0]]))
    exclude = sp.csr_matrix(np.array([[1, 0, 0, 0]]))
    m = rank_metrics(scores, truth, exclude, ks=(2, 3))
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["precision@2"] == pytest.approx(0.5)
    assert m["ndcg@2"] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))
    assert m["map@2"] == pytest.approx((1 / 2) / 2)
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["map@3"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["hit@2"] == 1.0


def test_ties_broken_by_lower_item_id():
    scores = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]])
    assert ranked_topk(scores.clone(), 2).tolist() == [[1, 2]]
    assert ranked_topk(scores.clone(), 4).tolist() == [[1, 2, 3, 0]]


def test_scores_are_not_modified_and_bad_shapes_rejected():
    scores, truth, exclude = random_case(0)
    s = torch.from_numpy(scores)
    before = s.clone()
    rank_metrics(s, sp.csr_matrix(truth), sp.csr_matrix(exclude))
    assert torch.equal(s, before)
    with pytest.raises(ValueError, match="shape"):
        rank_metrics(s[:, :5], sp.csr_matrix(truth), sp.csr_matrix(exclude))
    with pytest.raises(ValueError, match="exclude shape"):
        rank_metrics(s, sp.csr_matrix(truth), sp.csr_matrix(exclude[:, :5]))
    with pytest.raises(ValueError, match="ks"):
        rank_metrics(s, sp.csr_matrix(truth), None, ks=(0,))


def test_nan_scores_raise():
    scores, truth, exclude = random_case(0)
    scores[3, 2] = np.nan
    with pytest.raises(FloatingPointError, match="NaN"):
        rank_metrics(torch.from_numpy(scores), sp.csr_matrix(truth), sp.csr_matrix(exclude))


def test_per_user_values_average_to_the_means():
    scores, truth, exclude = random_case(2)
    m = rank_metrics(torch.from_numpy(scores), sp.csr_matrix(truth), sp.csr_matrix(exclude), per_user=True)
    per = m["per_user"]
    assert len(per["user"]) == m["users"] == int((truth.sum(1) > 0).sum())
    assert per["recall@20"].mean() == pytest.approx(m["recall@20"])


class _FixedModel(torch.nn.Module):
    def __init__(self, user, item):
        super().__init__()
        self.user, self.item = user, item
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self):
        return Output(self.user, self.item)

    def score(self, users, out):
        return out.user[users] @ out.item.T

    @property
    def device(self):
        return torch.device("cpu")


def test_evaluator_masks_train_and_optionally_valid(planted):
    rng = np.random.default_rng(0)
    user = torch.from_numpy(rng.normal(size=(planted.n_users, 8)).astype(np.float32))
    item = torch.from_numpy(rng.normal(size=(planted.n_items, 8)).astype(np.float32))
    model = _FixedModel(user, item)
    scores = (user @ item.T).numpy()
    dense = lambda m: m.toarray().astype(bool)  # noqa: E731
    for split, mask_valid in (("valid", False), ("test", False), ("test", True)):
        ev = Evaluator(planted, ks=(10, 20), batch_size=37, mask_valid_at_test=mask_valid)
        got = ev.evaluate(model, split)
        excl = dense(planted.train) | (dense(planted.valid) if split == "test" and mask_valid else False)
        want = reference_metrics(scores, dense(planted.split(split)), excl, (10, 20))
        for name, value in want.items():
            assert abs(got[name] - value) < 1e-6, (split, mask_valid, name)
    with pytest.raises(ValueError, match="valid"):
        Evaluator(planted).evaluate(model, "train")


def test_popularity_groups_split_by_training_degree():
    train = sp.csr_matrix(np.array([[1, 1, 1, 0, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 1]], dtype=np.float32))
    groups = popularity_groups(train, tail_share=0.6)  # degrees 3, 2, 1, 0, 2 -> tail = 3 least popular
    assert groups["tail"].tolist() == [1, 2, 3] and groups["head"].tolist() == [0, 4]  # tie 1 vs 4: lower id
    with pytest.raises(ValueError, match="tail_share"):
        popularity_groups(train, 1.0)


def test_evaluator_restricted_to_an_item_group_matches_reference(planted):
    rng = np.random.default_rng(1)
    user = torch.from_numpy(rng.normal(size=(planted.n_users, 8)).astype(np.float32))
    item = torch.from_numpy(rng.normal(size=(planted.n_items, 8)).astype(np.float32))
    groups = popularity_groups(planted.train)
    ev = Evaluator(planted, ks=(10, 20), batch_size=50)
    for name, items in groups.items():
        got = ev.evaluate(_FixedModel(user, item), "test", items=items)
        truth = planted.test.toarray().astype(bool)
        outside = np.ones(planted.n_items, dtype=bool)
        outside[items] = False
        truth[:, outside] = False  # only the group's positives count; every item is still ranked
        want = reference_metrics((user @ item.T).numpy(), truth, planted.train.toarray().astype(bool), (10, 20))
        assert got["users"] == want["users"] > 0
        for key, value in want.items():
            assert abs(got[key] - value) < 1e-6, (name, key)


def test_evaluator_keeps_each_splits_batches_across_models(planted):
    """The masked and truth positions are built once per split and serve every later model: two
    models' rankings (and an item-restricted evaluation in between) still match the reference."""
    ev = Evaluator(planted, ks=(10, 20), batch_size=37, mask_valid_at_test=True)
    dense = lambda m: m.toarray().astype(bool)  # noqa: E731
    for seed in (0, 1):
        rng = np.random.default_rng(seed)
        user = torch.from_numpy(rng.normal(size=(planted.n_users, 8)).astype(np.float32))
        item = torch.from_numpy(rng.normal(size=(planted.n_items, 8)).astype(np.float32))
        model = _FixedModel(user, item)
        for split in ("valid", "test"):
            got = ev.evaluate(model, split)
            ev.evaluate(model, split, items=popularity_groups(planted.train)["tail"])
            excl = dense(planted.train) | (dense(planted.valid) if split == "test" else False)
            want = reference_metrics((user @ item.T).numpy(), dense(planted.split(split)), excl, (10, 20))
            for name, value in want.items():
                assert abs(got[name] - value) < 1e-6, (seed, split, name)
    kept = ev.user_batches("valid", "cpu")
    assert kept is ev.user_batches("valid", torch.device("cpu")) and kept is not ev.user_batches("test", "cpu")
    assert [len(ids) for ids, *_ in kept.batches] == [37] * (len(kept.users) // 37) + ([len(kept.users) % 37] if len(kept.users) % 37 else [])
