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
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="is not a concepts file"):
        Concepts.load(garbage)
    torch.save({"weights": torch.zeros(2)}, garbage)
    with pytest.raises(ValueError, match="not a saved Concepts object"):
        Concepts.load(garbage)


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
    maps = concepts.encode(acts)
    codes = maps.flatten(2).amax(2)                                # (N, K) per-image maximum
    for r, c in zip(rows, cols):
        best = codes[:, r].topk(top).indices
        assert bool(carries[best, c].all()), (r, c, carries[best, c])
        # and the top position of each of those images lies on the planted block
        where = maps[best, r].flatten(1).argmax(1)
        assert bool((masks[best, c].flatten(1).gather(1, where[:, None]) > 0).all())


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


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_sae_with_default_settings_recovers_other_planted_concepts(seed):
    from captum_topk.concepts import learn_concepts

    d = planted_directions(seed)
    masks, carries = planted_masks(120, seed)
    model = Planted(d).eval()
    c = learn_concepts(model, "layer", masks, method="sae", n_concepts=K_TRUE, progress=False, seed=seed)
    assert c.encoder_state["steps"] >= 800  # small data: passes repeated up to min_steps / 100 passes
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


# ---------------------------------------------------------------------------- layouts, memory
@pytest.mark.parametrize("layout", ["NHWC", "NLC"])
def test_channels_last_and_token_layers_learn_the_same_concepts(planted, layout):
    from captum_topk.concepts import learn_concepts

    d, base, masks, _ = planted
    model = Planted(d, layout=layout).eval()
    model.head.load_state_dict(base.head.state_dict())
    kw = {"layout": "NHWC"} if layout == "NHWC" else {"token_grid": (GRID, GRID), "prefix_tokens": 0}
    got = learn_concepts(model, "layer", masks[:40], method="pca", n_concepts=3, progress=False, **kw)
    want = learn_concepts(base, "layer", masks[:40], method="pca", n_concepts=3, progress=False)
    torch.testing.assert_close(got.directions, want.directions, atol=1e-5, rtol=0)
    sae = learn_concepts(model, "layer", masks[:40], method="sae", n_concepts=4, k=2, epochs=2, progress=False, **kw)
    sae_ref = learn_concepts(base, "layer", masks[:40], method="sae", n_concepts=4, k=2, epochs=2, progress=False)
    torch.testing.assert_close(sae.directions, sae_ref.directions, atol=1e-5, rtol=0)
    # and the concept maps read the same positions
    from captum_topk.core.sources.torch import TorchSource

    a = TorchSource(model, "layer", progress=False, **kw)(masks[:2])["layer"]
    b = TorchSource(base, "layer", progress=False)(masks[:2])["layer"]
    torch.testing.assert_close(got.encode(a), want.encode(b))


def test_reservoir_is_a_uniform_fixed_size_sample_whatever_the_batching():
    from captum_topk.concepts.stream import Reservoir

    rows = torch.arange(5000, dtype=torch.float32)[:, None].repeat(1, 3)
    one = Reservoir(100, seed=4)
    for i in range(0, 5000, 1):
        one.add(rows[i:i + 1]) if i < 300 else None
    one_b = Reservoir(100, seed=4)
    for lo, hi in [(0, 7), (7, 150), (150, 151), (151, 300)]:
        one_b.add(rows[lo:hi])
    torch.testing.assert_close(one.rows, one_b.rows)  # batching does not change the sample
    big = Reservoir(100, seed=0)
    for i in range(0, 5000, 64):
        big.add(rows[i:i + 64])
    assert big.rows.shape == (100, 3) and big.seen == 5000 and big.nbytes == 100 * 3 * 4
    kept = big.rows[:, 0]
    assert len(set(kept.tolist())) == 100
    assert 1500 < float(kept.mean()) < 3500  # uniform over the stream, not its head
    assert float((kept >= 2500).float().mean()) > 0.3


def test_learning_on_ten_times_more_images_keeps_the_same_state(monkeypatch):
    import captum_topk.concepts.learn as learn

    sizes = []
    real = learn.Reservoir

    class Spy(real):
        def add(self, rows):
            super().add(rows)
            sizes.append(self.nbytes)

    monkeypatch.setattr(learn, "Reservoir", Spy)
    d = planted_directions()
    model = Planted(d).eval()
    out = {}
    for n in (30, 300):
        sizes.clear()
        masks, _ = planted_masks(n, seed=n)
        c = learn.learn_concepts(model, "layer", masks, method="nmf", n_concepts=K_TRUE, progress=False,
                                 reservoir_size=500, positions_per_image=8, batch_size=16)
        out[n] = (max(sizes), c.encoder_state["rows"], c.encoder_state["positions_seen"])
    assert out[30][0] == out[300][0] == 500 * C_MIX * 4            # the state does not grow
    assert out[30][1:] == (240, 240) and out[300][1:] == (500, 2400)
    # the SAE's and PCA's states are parameters / C x C moments: the same objects whatever N
    sae_small = learn.learn_concepts(model, "layer", planted_masks(20)[0], method="sae", n_concepts=6,
                                     epochs=1, progress=False)
    sae_big = learn.learn_concepts(model, "layer", planted_masks(200)[0], method="sae", n_concepts=6,
                                   epochs=1, progress=False)
    assert {k: tuple(v.shape) for k, v in sae_small.encoder_state.items() if isinstance(v, torch.Tensor)} == \
        {k: tuple(v.shape) for k, v in sae_big.encoder_state.items() if isinstance(v, torch.Tensor)}


# ---------------------------------------------------------------------------- decisions
def test_importance_equals_brute_force_autograd_on_the_concept_activations(planted):
    d, model, masks, _ = planted
    concepts = Concepts("layer", d + 0.05 * torch.randn(d.shape, generator=torch.Generator().manual_seed(1)), "nmf")
    x = masks[:6]
    got = concepts.importance(model, x, target=1, batch_size=4)
    per = concepts.importance(model, x, target=[0, 1, 2, 0, 1, 2], per_image=True, batch_size=4)
    # brute force: replace the layer's output a by a + (u D - stopgrad(u D)), u a leaf
    from captum_topk.core.sources.torch import TorchSource

    acts = TorchSource(model, "layer", progress=False)(x)["layer"]
    u = concepts.encode(acts).detach().requires_grad_(True)
    dd = concepts.directions

    def hook(_, __, out):
        rebuilt = torch.einsum("nkhw,kc->nchw", u, dd)
        return out + rebuilt - rebuilt.detach()

    h = model.layer.register_forward_hook(hook)
    try:
        logits = model(x)
    finally:
        h.remove()
    want_per = []
    for t in range(3):
        (g,) = torch.autograd.grad(logits[:, t].sum(), u, retain_graph=True)
        want_per.append((g * u).sum((2, 3)).detach())
    torch.testing.assert_close(got, want_per[1].mean(0), atol=1e-5, rtol=1e-4)
    targets = [0, 1, 2, 0, 1, 2]
    torch.testing.assert_close(per, torch.stack([want_per[t][i] for i, t in enumerate(targets)]), atol=1e-5, rtol=1e-4)
    assert got.abs().max() > 1e-3


def test_heatmaps_upsample_the_concept_maps_to_the_image(planted):
    d, model, masks, carries = planted
    concepts = Concepts("layer", d, "nmf")
    maps = concepts.heatmaps(model, masks[:5])
    assert maps.shape == (5, K_TRUE, GRID, GRID)  # the layer's grid is the image's here
    torch.testing.assert_close(maps, masks[:5], atol=1e-3, rtol=0)  # the planted masks come back
    big = concepts.heatmaps(model, masks[:2], size=32)
    assert big.shape == (2, K_TRUE, 32, 32)
    torch.testing.assert_close(big.mean((2, 3)), maps[:2].mean((2, 3)), atol=0.05, rtol=0)


def test_from_classifier_projects_on_class_weights(planted):
    d, model, masks, _ = planted
    c = Concepts.from_classifier("layer", torch.nn.Sequential(torch.nn.Dropout(), model.head),
                                 classes=["a", "b", "c"])
    assert (c.method, c.n_concepts, c.labels, c.name) == ("classifier", 3, ["a", "b", "c"], "classifier3")
    from captum_topk.core.sources.torch import TorchSource

    acts = TorchSource(model, "layer", progress=False)(masks[:4])["layer"]
    # the mean over positions of the class maps is the logit minus the bias
    torch.testing.assert_close(c.encode(acts).mean((2, 3)) + model.head.bias, model(masks[:4]), atol=1e-5, rtol=1e-5)
    from captum_topk.transfer.linear import fit_linear_head

    feats, labels = acts.mean((2, 3)), carries_label(masks[:40])
    with torch.no_grad():
        pooled = TorchSource(model, "layer", progress=False)(masks[:40])["layer"].mean((2, 3))
    head, _ = fit_linear_head(pooled, labels, l2=1.0, max_iter=20)
    assert Concepts.from_classifier("layer", head).directions.shape == (int(max(labels)) + 1, C_MIX)
    assert feats.shape == (4, C_MIX)


def carries_label(masks):
    return masks.flatten(2).sum(2).argmax(1)


def test_match_concepts_by_cosine_and_by_correlation(planted):
    from captum_topk import match_concepts

    d, model, masks, _ = planted
    a = Concepts("layer", d, "nmf")
    perm = torch.tensor([2, 0, 3, 1])
    other = torch.nn.functional.normalize(torch.rand(1, C_MIX, generator=torch.Generator().manual_seed(9)), dim=1)
    b = Concepts("layer", torch.cat([d[perm][:3], other]), "nmf")       # concept 1 replaced
    m = match_concepts(a, b, threshold=0.95)
    assert [(i, j) for i, j, _ in m.kept] == [(0, 1), (2, 0), (3, 2)]
    assert m.dropped == [1] and m.created == [3] and m.threshold == 0.95
    assert m.units.assignment[1] == 3 and m.units.correlation[1] < 0.95
    assert all(s == pytest.approx(1.0, abs=1e-6) for _, _, s in m.kept)
    mc = match_concepts(a, Concepts("layer", d[perm], "nmf"), by="correlation", model_a=model, data=masks[:60])
    assert [(i, j) for i, j, _ in mc.kept] == [(0, 1), (1, 3), (2, 0), (3, 2)]
    assert min(s for _, _, s in mc.kept) > 0.99 and mc.dropped == mc.created == []
    with pytest.raises(ValueError, match="same width"):
        match_concepts(a, Concepts("layer", torch.rand(2, 3), "vectors"))


def test_from_tcav_directions_come_from_captum_cavs(planted):
    from captum.concept import Concept

    d, model, masks, carries = planted
    concept_sets = []
    for k in range(2):
        only = masks[carries[:, k] & (carries.sum(1) == 1)][:12]
        concept_sets.append(Concept(k, f"planted{k}", iter([only])))
    rand = masks[(~carries[:, 0]) & (~carries[:, 1])][:12]
    c = Concepts.from_tcav(model, "layer", concept_sets, Concept(9, "random", iter([rand])))
    assert (c.method, c.labels, c.n_concepts, c.channels) == ("tcav", ["planted0", "planted1"], 2, C_MIX)
    cos = torch.nn.functional.normalize(c.directions, dim=1) @ d.T
    assert int(cos[0].argmax()) == 0 and int(cos[1].argmax()) == 1


def test_pool_flat_weights_follows_the_raw_layout():
    from captum_topk.concepts.given import pool_flat_weights

    w = torch.randn(2, 3, 4, 5)  # (K, C, h, w) flattened as NCHW
    torch.testing.assert_close(pool_flat_weights(w.reshape(2, -1), "NCHW", (3, 4, 5)), w.sum((2, 3)))
    torch.testing.assert_close(pool_flat_weights(w.permute(0, 2, 3, 1).reshape(2, -1), "NHWC", (4, 5, 3)), w.sum((2, 3)))
    torch.testing.assert_close(pool_flat_weights(w.flatten(2).transpose(1, 2).reshape(2, -1), "NLC", (20, 3)), w.sum((2, 3)))


def test_public_names_are_lazy_and_sklearn_is_imported_only_inside_functions():
    import ast
    from pathlib import Path

    import captum_topk
    from captum_topk.concepts import compare, learn

    assert "Concepts" in captum_topk.__all__ and captum_topk.Concepts is Concepts
    assert captum_topk.learn_concepts is learn.learn_concepts
    assert captum_topk.match_concepts is compare.match_concepts
    for path in Path(learn.__file__).parent.glob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level only
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in {"sklearn", "scipy"} for n in names), (path, names)


def test_learning_leaves_the_global_rng_alone():
    from captum_topk.concepts.learn import learn_concepts

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU()).eval()
    x = torch.randn(8, 3, 10, 10, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first = learn_concepts(model, "1", x, method="sae", n_concepts=4, progress=False, min_steps=5)
    assert torch.equal(torch.rand(3), expected)
    second = learn_concepts(model, "1", x, method="sae", n_concepts=4, progress=False, min_steps=5)
    assert torch.equal(first.directions, second.directions)
