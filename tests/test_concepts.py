"""Concepts: directions of a layer, their encodings, learning (NMF / SAE / PCA) on planted
concepts, importance, matching, save / load, streaming memory."""

import json

import pytest
import torch

from captum_topk.concepts import Concepts
from captum_topk.concepts.base import nnls


def test_from_vectors_encodes_by_projection_in_both_canonical_shapes():
    torch.manual_seed(0)
    d = torch.randn(3, 5)
    c = Concepts.from_vectors("layer1", d)
    assert (c.layer, c.method, c.name, c.n_concepts, c.channels) == ("layer1", "vectors", "vectors3", 3, 5)
    acts = torch.randn(2, 5, 4, 6)
    got = c.encode(acts)
    assert got.shape == (2, 3, 4, 6)
    for n, k, y, x in [(0, 0, 0, 0), (1, 2, 3, 5), (1, 1, 2, 0)]:
        assert got[n, k, y, x].item() == pytest.approx(float(acts[n, :, y, x] @ d[k]), abs=1e-5)
    flat = torch.randn(7, 5)
    torch.testing.assert_close(c.encode(flat), flat @ d.T)
    with pytest.raises(ValueError, match="channels"):
        c.encode(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="canonical"):
        c.encode(torch.randn(2, 5, 3))


def test_nnls_matches_exact_solution_and_nmf_encoding_is_nonnegative():
    torch.manual_seed(0)
    basis = torch.rand(4, 10)
    h_true = torch.rand(50, 4) * (torch.rand(50, 4) > 0.4)
    x = h_true @ basis
    h = nnls(x, basis, n_iter=3000, tol=0)
    torch.testing.assert_close(h, h_true, atol=1e-3, rtol=0)
    c = Concepts("l", basis, "nmf")
    codes = c.encode(x.reshape(5, 10, 10).permute(0, 2, 1).reshape(5, 10, 10, 1))
    assert codes.shape == (5, 4, 10, 1) and bool((codes >= 0).all())
    # a point outside the cone: the projected solution satisfies the KKT conditions
    y = torch.randn(20, 10)
    hy = nnls(y, basis, n_iter=5000, tol=0)
    grad = (hy @ basis - y) @ basis.T
    assert bool((grad[hy > 1e-6].abs() < 1e-3).all()) and bool((grad[hy <= 1e-6] > -1e-3).all())


def test_sae_and_pca_encodings_by_hand():
    torch.manual_seed(1)
    k, c = 6, 4
    state = {"W_enc": torch.randn(k, c), "b_enc": torch.randn(k), "b_pre": torch.randn(c), "k": 2}
    dec = torch.nn.functional.normalize(torch.randn(k, c), dim=1)
    sae = Concepts("l", dec, "sae", encoder_state=state)
    x = torch.randn(9, c)
    pre = torch.relu((x - state["b_pre"]) @ state["W_enc"].T + state["b_enc"])
    z = sae.encode(x)
    for i in range(9):
        keep = pre[i].topk(2).indices
        want = torch.zeros(k)
        want[keep] = pre[i, keep]
        torch.testing.assert_close(z[i], want)
    assert bool(((z > 0).sum(1) <= 2).all())
    mean = torch.randn(c)
    pca = Concepts("l", torch.eye(c)[:2], "pca", encoder_state={"mean": mean})
    torch.testing.assert_close(pca.encode(x), (x - mean)[:, :2])
    with pytest.raises(ValueError, match="W_enc"):
        Concepts("l", dec, "sae", encoder_state={"k": 2})


def test_save_load_round_trip_is_safe_and_exact(tmp_path):
    torch.manual_seed(2)
    state = {"W_enc": torch.randn(5, 3), "b_enc": torch.randn(5), "b_pre": torch.randn(3), "k": 2,
             "images": 40}
    c = Concepts("blocks.1:x", torch.randn(5, 3), "sae", name="mine", encoder_state=state,
                 labels=list("abcde"))
    path = tmp_path / "c.pt"
    c.save(path)
    raw = torch.load(path, weights_only=True)  # no pickled objects
    assert json.loads(raw["meta"])["method"] == "sae"
    back = Concepts.load(path)
    assert back == c and back.name == "mine" and back.labels == list("abcde")
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(back.encode(x), c.encode(x))
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, nothing left behind
    with pytest.raises(ValueError, match="':'"):
        Concepts("l", torch.randn(2, 3), "vectors", name="a:b")
