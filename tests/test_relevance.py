"""Relevance-ranked top-k (RelMax, ``rank_by=``) against the Captum class applied image by image."""

from __future__ import annotations

import pytest
import torch
from captum.attr import LayerGradCam, LayerGradientXActivation, LayerLRP
from torch import nn

from captum_topk import LayerTopKPatches, TopKResult

from ._models import convnext_like, seeded_images, small_classifier
from ._reference import reference_topk


def _net() -> nn.Module:
    return small_classifier()


def _images(n=11, size=16, seed=1):
    return seeded_images(n, size, seed)


def _per_image(method_cls, model, layer, images, targets):
    r"""The Captum class applied to one image at a time, stacked: (N, C, h, w)."""
    out = []
    for i in range(images.shape[0]):
        out.append(method_cls(model, layer).attribute(images[i : i + 1], target=int(targets[i])).detach())
    return torch.cat(out)


def _assert_ranked(result, layer, attrs, k, distinct=True):
    for which in ("top", "bottom"):
        ref = reference_topk(attrs, k, distinct_images=distinct, which=which)
        for ch, expected in ref.items():
            got = [(r.value, r.index, r.y, r.x) for r in result.records(layer, ch, which)]
            assert [g[1:] for g in got] == [e[1:] for e in expected], (layer, ch, which)
            for g, e in zip(got, expected):
                assert g[0] == pytest.approx(e[0], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("distinct", [True, False])
def test_gradient_x_activation_twin_with_per_image_targets(distinct):
    model = _net()
    images = _images()
    labels = torch.arange(11) % 5
    batches = [(images[i : i + 4], labels[i : i + 4]) for i in range(0, 11, 4)]
    miner = LayerTopKPatches(model, ["0", "3"], k=3, distinct_images=distinct,
                             rank_by=LayerGradientXActivation, target="label")
    result = miner.mine(batches, progress=False)
    for name in ("0", "3"):
        attrs = _per_image(LayerGradientXActivation, model, model.get_submodule(name), images, labels)
        _assert_ranked(result, name, attrs, 3, distinct)
        assert result.ranked_by(name) == {"method": "LayerGradientXActivation", "target": "label",
                                          "ranked": "per-position layer attribution"}
    # the ranking is not the activation ranking
    plain = LayerTopKPatches(model, ["0", "3"], k=3).mine(images, progress=False)
    assert not torch.equal(plain.indices("3"), result.indices("3"))
    assert plain.ranked_by("3") is None


@pytest.mark.parametrize("target", [2, "predicted", "table", "callable"])
def test_target_forms(target):
    model = _net()
    images = _images(9)
    logits = model(images).detach()
    table = torch.tensor([4, 0, 1, 3, 2, 2, 1, 0, 4])
    expected = {2: torch.full((9,), 2), "predicted": logits.argmax(1), "table": table,
                "callable": logits.argmin(1)}[target]
    given = {"table": table, "callable": lambda labels, out: out.argmin(dim=1)}.get(target, target)
    result = LayerTopKPatches(model, "3", k=4, rank_by=LayerGradientXActivation, target=given).mine(
        [images[:5], images[5:]], progress=False)
    _assert_ranked(result, "3", _per_image(LayerGradientXActivation, model, model[3], images, expected), 4)


class _LrpNet(nn.Module):
    r"""Layers LRP has rules for; the flatten is a tensor operation of the forward."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


def test_instance_and_lrp_twin():
    lrp_net = _LrpNet().eval()
    images = _images(7)
    result = LayerTopKPatches(lrp_net, "features.3", k=3, rank_by=LayerLRP, target=1).mine(images, progress=False)
    attrs = _per_image(LayerLRP, lrp_net, lrp_net.features[3], images, torch.full((7,), 1))
    _assert_ranked(result, "features.3", attrs, 3)
    assert result.metadata["rank_by"]["method"] == "LayerLRP"
    model = _net()
    inst = LayerTopKPatches(model, "3", k=3, rank_by=LayerGradientXActivation(model, model[3]), target=1)
    got = inst.mine(images, progress=False)
    _assert_ranked(got, "3", _per_image(LayerGradientXActivation, model, model[3], images, torch.full((7,), 1)), 3)
    with pytest.raises(ValueError, match="other layers than the mined ones"):
        LayerTopKPatches(model, "0", rank_by=LayerGradientXActivation(model, model[3]), target=1)


def test_channels_last_layer_is_ranked_in_canonical_layout():
    model = convnext_like()
    images = torch.rand(5, 3, 12, 12)
    # the model outputs a map: rank toward the mean of its channel 1, through a wrapper
    wrapped = nn.Sequential(model, nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    result = LayerTopKPatches(wrapped, ["0.3"], k=2, rank_by=LayerGradientXActivation, target=1).mine(
        images, progress=False)
    assert result.layout("0.3") == "NHWC"
    attrs = _per_image(LayerGradientXActivation, wrapped, wrapped.get_submodule("0.3"), images, torch.ones(5))
    _assert_ranked(result, "0.3", attrs.permute(0, 3, 1, 2), 2)


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


def test_hooks_removed_after_success_and_failure():
    model = _net()
    LayerTopKPatches(model, ["0", "3"], k=2, rank_by=LayerGradientXActivation, target=0).mine(
        _images(4), progress=False)
    assert _hooks(model) == 0
    with pytest.raises(IndexError, match="per-image targets"):
        LayerTopKPatches(model, ["0", "3"], k=2, rank_by=LayerGradientXActivation,
                         target=torch.tensor([0, 1])).mine(_images(4), progress=False)
    assert _hooks(model) == 0
    with pytest.raises(ValueError, match="labelled batches"):
        LayerTopKPatches(model, "3", rank_by=LayerGradientXActivation, target="label").mine(
            _images(4), progress=False)
    assert _hooks(model) == 0 and all(p.grad is None for p in model.parameters())


def test_shards_merge_exactly_and_refuse_other_rankings(tmp_path):
    model = _net()
    images = _images(12)

    def miner(**kw):
        return LayerTopKPatches(model, ["0", "3"], k=3, stats=True, **kw)

    kw = dict(rank_by=LayerGradientXActivation, target=3)
    one = miner(**kw).mine([images[i : i + 3] for i in range(0, 12, 3)], progress=False)
    a, b = miner(**kw), miner(**kw)
    for s in (0, 6):
        a.update(images[s : s + 3], indices=range(s, s + 3))
        b.update(images[s + 3 : s + 6], indices=range(s + 3, s + 6))
    merged = a.merge(b).compute()
    for layer in ("0", "3"):
        for name, t in one.states[layer].tensors.items():
            assert torch.equal(t, merged.states[layer].tensors[name]), (layer, name)
    one.save(tmp_path / "r.pt")
    back = TopKResult.load(tmp_path / "r.pt")
    assert back.ranked_by("3") == one.ranked_by("3") and back.metadata["rank_by"]["target"] == 3
    with pytest.raises(ValueError, match="ranked by"):
        miner().merge(one)
    with pytest.raises(ValueError, match="ranked by"):
        miner(rank_by=LayerGradientXActivation, target=4).load_state(tmp_path / "r.pt")
    plain = miner().mine(images, progress=False)
    with pytest.raises(ValueError, match="cannot merge values"):
        plain.merge(back)


def test_bad_arguments():
    model = _net()
    with pytest.raises(ValueError, match="needs target"):
        LayerTopKPatches(model, "3", rank_by=LayerGradientXActivation)
    with pytest.raises(ValueError, match="go with rank_by"):
        LayerTopKPatches(model, "3", target=1)
    with pytest.raises(TypeError, match="Captum layer attribution class"):
        LayerTopKPatches(model, "3", rank_by="gxa", target=1)
    with pytest.raises(ValueError, match="'label', 'predicted'"):
        LayerTopKPatches(model, "3", rank_by=LayerGradientXActivation, target="labels")
    with pytest.raises(ValueError, match="one attribution per channel and position"):
        LayerTopKPatches(model, "3", rank_by=LayerGradCam, target=1).mine(_images(2), progress=False)


def test_concept_relevance_is_gradient_times_concept_activation():
    from captum.attr import LayerActivation

    from captum_topk import Concepts

    model = _net()
    images = _images(9)
    g = torch.Generator().manual_seed(2)
    concepts = [Concepts.from_vectors("3", torch.randn(4, 8, generator=g), name="v4"),
                Concepts.from_vectors("0", torch.randn(3, 6, generator=g), name="v3")]
    result = LayerTopKPatches(model, ["0", "3"], k=3, rank_by=LayerGradientXActivation, target=2,
                              concepts=concepts).mine([images[:5], images[5:]], progress=False)
    targets = torch.full((9,), 2)
    for c in concepts:
        layer = model.get_submodule(c.layer)
        grads = torch.cat([LayerGradientXActivation(model, layer, multiply_by_inputs=False).attribute(
            images[i : i + 1], target=2).detach() for i in range(9)])
        acts = LayerActivation(model, layer).attribute(images)
        expected = c.encode(acts) * torch.einsum("nchw,kc->nkhw", grads, c.directions)
        _assert_ranked(result, f"{c.layer}:{c.name}", expected, 3)
        _assert_ranked(result, c.layer, _per_image(LayerGradientXActivation, model, layer, images, targets), 3)
        assert result.ranked_by(f"{c.layer}:{c.name}")["concepts"].startswith("gradient x concept activation")
    with pytest.raises(ValueError, match="gradient x concept activation"):
        LayerTopKPatches(model, ["3"], rank_by=LayerLRP, target=2, concepts=concepts[:1])
