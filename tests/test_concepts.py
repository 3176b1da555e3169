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
    h = nnls(x, basis, n_iter=1000, tol=0)
    torch.testing.assert_close(h, h_true, atol=1e-3, rtol=0)
    c = Concepts("l", basis, "nmf")
    codes = c.encode(x.reshape(5, 10, 10).permute(0, 2, 1).reshape(5, 10, 10, 1))
    assert codes.shape == (5, 4, 10, 1) and bool((codes >= 0).all())
    # a point outside the cone: the projected solution satisfies the KKT conditions
    y = torch.randn(20, 10)
    hy = nnls(y, basis, n_iter=1500, tol=0)
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


# ---------------------------------------------------------------------------- planted concepts
K_TRUE, C_MIX, GRID = 4, 10, 8


def planted_directions(seed=0):
    r"""K non-negative unit directions mixed into C channels: every channel mixes >= 2 concepts."""
    g = torch.Generator().manual_seed(seed)
    d = torch.rand(K_TRUE, C_MIX, generator=g) * (torch.rand(K_TRUE, C_MIX, generator=g) < 0.6)
    for c in range(C_MIX):  # no single channel is one concept
        if (d[:, c] > 0).sum() < 2:
            d[torch.randperm(K_TRUE, generator=g)[:2], c] = torch.rand(2, generator=g) + 0.2
    return torch.nn.functional.normalize(d, dim=1)


def planted_masks(n, seed=0):
    r"""(n, K, GRID, GRID) concept masks: each image carries one or two concepts, each on a 2x2
    block at a random place with an intensity in [0.5, 1.5]; which image carries what."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(n, K_TRUE, GRID, GRID)
    carries = torch.zeros(n, K_TRUE, dtype=torch.bool)
    for i in range(n):
        m = 1 + int(torch.rand(1, generator=g) < 0.5)
        for k in torch.randperm(K_TRUE, generator=g)[:m].tolist():
            y, x = torch.randint(0, GRID - 1, (2,), generator=g).tolist()
            masks[i, k, y:y + 2, x:x + 2] += 0.5 + torch.rand(1, generator=g)
            carries[i, k] = True
    return masks, carries


class Planted(torch.nn.Module):
    r"""Masks -> planted activations (a 1x1 mix by the directions, plus small non-negative
    noise-free offsets) at ``self.layer``, raw layout NCHW / NHWC / tokens; then a classifier."""

    def __init__(self, directions, layout="NCHW", classes=3):
        super().__init__()
        k, c = directions.shape
        self.mix = torch.nn.Conv2d(k, c, 1, bias=False)
        self.mix.weight.data = directions.T.reshape(c, k, 1, 1).clone()
        self.layer = torch.nn.Identity()
        self.layout = layout
        self.head = torch.nn.Linear(c, classes)
        torch.nn.init.normal_(self.head.weight, generator=torch.Generator().manual_seed(3))

    def forward(self, masks):
        a = self.mix(masks)
        if self.layout == "NHWC":
            a = self.layer(a.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        elif self.layout == "NLC":
            a = self.layer(a.flatten(2).transpose(1, 2)).transpose(1, 2)
        else:
            a = self.layer(a)
        return self.head(a.flatten(2).mean(2))


def _match(learned, true):
    from scipy.optimize import linear_sum_assignment

    cos = torch.nn.functional.normalize(learned, dim=1) @ torch.nn.functional.normalize(true, dim=1).T
    rows, cols = linear_sum_assignment(cos.numpy(), maximize=True)
    return rows, cols, cos[rows, cols]


@pytest.fixture(scope="module")
def planted():
    d = planted_directions()
    masks, carries = planted_masks(120)
    return d, Planted(d).eval(), masks, carries


def _check_recovered(concepts, d, model, masks, carries, top=8):
    rows, cols, cos = _match(concepts.directions, d)
    assert cos.min() > 0.9, cos
    from captum_topk.core.sources.torch import TorchSource

    acts = TorchSource(model, "layer", progress=False)(masks)["layer"]
    codes = concepts.encode(acts).flatten(2).amax(2)              # (N, K) per-image maximum
    for r, c in zip(rows, cols):
        best = codes[:, r].topk(top).indices
        assert bool(carries[best, c].all()), (r, c, carries[best, c])


def test_nmf_recovers_planted_concepts_and_their_top_images(planted):
    from captum_topk.concepts import learn_concepts

    d, model, masks, carries = planted
    assert all(((d[:, c] > 0).sum() >= 2) for c in range(C_MIX))  # no channel is a concept
    c = learn_concepts(model, "layer", masks, method="nmf", n_concepts=K_TRUE, progress=False,
                       positions_per_image=None, batch_size=32)
    assert (c.method, c.layer, c.name, c.encoder_state["images"]) == ("nmf", "layer", "nmf4", 120)
    torch.testing.assert_close(c.directions.norm(dim=1), torch.ones(K_TRUE))
    _check_recovered(c, d, model, masks, carries)


def test_sae_recovers_planted_concepts_and_their_top_images(planted):
    from captum_topk.concepts import learn_concepts

    d, model, masks, carries = planted
    c = learn_concepts(model, "layer", masks, method="sae", n_concepts=K_TRUE, k=2, epochs=5,
                       lr=1e-2, sae_batch_size=128, positions_per_image=None, progress=False, batch_size=60)
    assert c.method == "sae" and c.encoder_state["k"] == 2
    _check_recovered(c, d, model, masks, carries)


def test_pca_recovers_the_span_and_nmf_refuses_negative_layers(planted):
    from captum_topk.concepts import learn_concepts

    d, model, masks, _ = planted
    c = learn_concepts(model, "layer", masks, method="pca", n_concepts=K_TRUE, progress=False)
    p = c.directions
    torch.testing.assert_close(p @ p.T, torch.eye(K_TRUE), atol=1e-5, rtol=0)
    # every planted direction lies in the span of the components (centring aside: the data's
    # mean is itself a non-negative mix of the directions)
    resid = d - (d @ p.T) @ p
    assert float(resid.norm(dim=1).max()) < 1e-3
    assert sum(c.encoder_state["explained_variance_ratio"]) == pytest.approx(1.0, abs=1e-4)
    neg = Planted(torch.cat([d, -d[:1]]).T[:, :K_TRUE].T.contiguous() - 0.3).eval()
    with pytest.raises(ValueError, match="negative activations.*post-ReLU"):
        learn_concepts(neg, "layer", masks, method="nmf", n_concepts=2, progress=False)
    clamped = learn_concepts(neg, "layer", masks[:30], method="nmf", n_concepts=2, progress=False,
                             negatives="clamp")
    assert clamped.encoder_state["clamp"] is True
