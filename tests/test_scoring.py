"""The evaluation harness (scoring.py): the metrics of metrics.py run on encoded data."""

import numpy as np
import pytest
import torch

import metrics
import scoring


def test_factor_scores_read_the_4_factor_dsprites_mig_from_the_one_mi_matrix():
    import data
    ds = data.load_dataset("shapes")
    idx = scoring.eval_indices(len(ds), 3000, 0)                         # (N,)
    f = ds.factors[idx].double()                                          # (N, 5)
    rng = np.random.default_rng(0)
    codes = torch.cat([f[:, 1:] / 10 + 0.01 * torch.from_numpy(rng.normal(size=(3000, 4))),
                       torch.from_numpy(rng.normal(size=(3000, 2)))], dim=1).float()  # (N, 6)
    logvar = torch.full_like(codes, -6.0)
    calls = []

    def encode(i):
        calls.append(len(i))
        return codes[:len(i)] * 0 + ds.factors[i, 1:2].float().repeat(1, 6) / 10, None

    reasons = {}
    scores, mig_res = scoring.factor_scores(ds, idx, codes, logvar, None, encode, 20, 0, reasons)
    assert mig_res is not None and not reasons
    assert scores["mig"] == pytest.approx(float(np.mean(mig_res["gaps"][1:])))     # Chen Table 2's four
    assert scores["mig_5factors"] == pytest.approx(mig_res["mig"])
    four = metrics.mig(codes, ds.factors[idx], logvar=logvar, factor_subset=[1, 2, 3, 4], seed=0)["mig"]
    assert scores["mig"] == pytest.approx(four, abs=0.02)                 # the same quantity, other draws
    assert len(calls) == 1 and calls[0] <= 20 * 100                       # the votes were encoded once


def test_encode_reusing_copies_known_rows_and_encodes_each_new_image_once():
    known_idx = torch.tensor([5, 2, 9])
    known = torch.tensor([[5.0], [2.0], [9.0]])                          # code = image index
    seen = []

    def encode(i):
        seen.append(i.tolist())
        return i.float()[:, None], i % 2

    codes, disc = scoring.encode_reusing(torch.tensor([2, 7, 7, 9, 1]), known_idx, known, torch.tensor([0, 0, 1]),
                                         encode, 10)
    assert codes[:, 0].tolist() == [2.0, 7.0, 7.0, 9.0, 1.0] and seen == [[1, 7]]
    assert disc.tolist() == [0, 1, 1, 1, 1]
