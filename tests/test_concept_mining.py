"""Concept directions mined beside the channels (``concepts=``) against brute-force twins."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from captum_topk import Concepts, LayerTopKPatches, TopKResult

from ._models import convnext_like, seeded_images, small_classifier
from ._reference import full_activations, reference_topk
from ._tolerance import assert_same_records


def _net() -> nn.Module:
    return small_classifier()


def _images(n=13, size=16, seed=1):
    return seeded_images(n, size, seed)


class _ReluProjection:
    r"""A concept set that is not a Concepts: the protocol is duck-typed."""

    def __init__(self, layer, directions, name):
        self.layer, self.name, self.directions = layer, name, directions
        self.n_concepts = directions.shape[0]

    def encode(self, acts):
        if acts.dim() == 2:
            return torch.relu(acts @ self.directions.T)
        return torch.relu(torch.einsum("nchw,kc->nkhw", acts, self.directions))


def _assert_twin(result, layer, acts, k, distinct=True):
    for which in ("top", "bottom"):
        for ch, expected in reference_topk(acts, k, distinct_images=distinct, which=which).items():
            got = [(r.value, r.index, r.y, r.x) for r in result.records(layer, ch, which)]
            assert [g[1:] for g in got] == [e[1:] for e in expected], (layer, ch, which)
            for g, e in zip(got, expected):
                assert g[0] == pytest.approx(e[0], rel=1e-5, abs=1e-6)


def _concepts():
    g = torch.Generator().manual_seed(5)
    return [Concepts.from_vectors("3", torch.randn(4, 8, generator=g), name="v4"),
            _ReluProjection("0", torch.randn(3, 6, generator=g), "relu3"),
            Concepts.from_vectors("7", torch.randn(2, 5, generator=g), name="logit2")]


@pytest.mark.parametrize("distinct", [True, False])
def test_concept_topk_equals_encoded_hooked_activations(distinct):
    model = _net()
    images = _images()
    concepts = _concepts()
    miner = LayerTopKPatches(model, ["0", "3", "7"], k=3, distinct_images=distinct, concepts=concepts)
    result = miner.mine([images[i : i + 4] for i in range(0, 13, 4)], progress=False)
    assert result.layers == ["0", "3", "7", "3:v4", "0:relu3", "7:logit2"]
    assert miner.concept_layers == ["3:v4", "0:relu3", "7:logit2"]
    for c in concepts:
        acts = full_activations(model, model.get_submodule(c.layer), images)
        _assert_twin(result, f"{c.layer}:{c.name}", c.encode(acts), 3, distinct)
        meta = result.concept(f"{c.layer}:{c.name}")
        assert meta["layer"] == c.layer and meta["n_concepts"] == c.n_concepts
    # the channels are mined as without concepts
    plain = LayerTopKPatches(model, ["0", "3", "7"], k=3, distinct_images=distinct).mine(images, progress=False)
    for layer in ("0", "3", "7"):
        assert torch.equal(plain.indices(layer), result.indices(layer))
        assert result.concept(layer) is None
    # boxes are the base layer's receptive fields; a vector layer's concepts are whole images
    rec = result.records("3:v4", 1)[0]
    assert rec.box == result.receptive_fields["3"][(16, 16)].box(rec.y, rec.x)
    assert result.num_channels("3:v4") == 4 and result.layout("3:v4") == "NCHW"
    assert result.records("7:logit2", 0)[0].box == (0, 0, 16, 16) and result.layout("7:logit2") == "NC"
    assert [m["result_layer"] for m in result.metadata["concepts"]] == ["3:v4", "0:relu3", "7:logit2"]


def test_statistics_patches_and_activation_maps_of_concepts():
    model = _net()
    images = _images(9)
    c = _concepts()[0]
    miner = LayerTopKPatches(model, ["3"], k=3, stats=True, concepts=[c])
    result = miner.mine(images, progress=False)
    z = c.encode(full_activations(model, model[3], images))
    stats = result.stats("3:v4")
    assert int(stats.count[0]) == z[:, 0].numel()
    torch.testing.assert_close(stats.mean.float(), z.mean(dim=(0, 2, 3)), rtol=1e-5, atol=1e-6)
    crops = result.patches(images, "3:v4", 2)
    assert crops.shape[0] == 3 and crops.shape[2:] == result.receptive_fields["3"][(16, 16)].size
    recs = result.records("3:v4", 2)
    for maps in (result.activation_maps(images, "3:v4", 2, model=miner),
                 result.activation_maps(images, "3:v4", 2, model=model, concepts=[c])):
        assert maps.shape == (3, 4, 4)
        for r, m in zip(recs, maps):
            assert float(m[r.y, r.x]) == pytest.approx(r.value, rel=1e-5)
            assert torch.allclose(m, z[r.index, 2])
    with pytest.raises(ValueError, match="is a concept layer: pass the concepts"):
        result.activation_maps(images, "3:v4", 2, model=model)
    other = Concepts.from_vectors("3", torch.randn(4, 8), name="v4")
    with pytest.raises(ValueError, match="not those it was mined with"):
        result.activation_maps(images, "3:v4", 2, model=model, concepts=[other])
    with pytest.raises(ValueError, match="concept layer"):
        result.projections(images, "3:v4", 2, model=model)


def test_channels_last_layer_concepts_use_the_canonical_layout():
    model = convnext_like()
    images = torch.rand(4, 3, 12, 12)
    c = Concepts.from_vectors("3", torch.randn(5, 16, generator=torch.Generator().manual_seed(0)), name="p5")
    result = LayerTopKPatches(model, ["3"], k=2, concepts=[c]).mine(images, progress=False)
    maps = full_activations(model, model[3], images).permute(0, 3, 1, 2)
    _assert_twin(result, "3:p5", c.encode(maps), 2)
    assert result.layout("3") == "NHWC" and result.layout("3:p5") == "NCHW"


def test_shards_merge_exactly_save_load_and_refuse_other_concepts(tmp_path):
    model = _net()
    images = _images(12)
    concepts = _concepts()[:2]

    def miner(cs=concepts):
        return LayerTopKPatches(model, ["0", "3"], k=3, stats=True, concepts=cs)

    one = miner().mine([images[i : i + 3] for i in range(0, 12, 3)], progress=False)
    a, b = miner(), miner()
    for s in (0, 6):
        a.update(images[s : s + 3], indices=range(s, s + 3))
        b.update(images[s + 3 : s + 6], indices=range(s + 3, s + 6))
    import io

    buf = io.BytesIO()  # what torchrun's rank 0 gathers (core.accumulators.base.gather_payloads)
    torch.save(b.snapshot().to_payload(), buf)
    buf.seek(0)
    merged = a.merge(TopKResult.from_payload(torch.load(buf, weights_only=True))).compute()
    for layer in one.layers:
        for name, t in one.states[layer].tensors.items():
            assert torch.equal(t, merged.states[layer].tensors[name]), (layer, name)
        assert torch.equal(one.stats(layer).hist, merged.stats(layer).hist)
    one.save(tmp_path / "r.pt")
    back = TopKResult.load(tmp_path / "r.pt")
    assert back.concept("3:v4") == one.concept("3:v4")
    assert back.records("3:v4", 0) == one.records("3:v4", 0)
    resumed = miner()
    resumed.load_state(tmp_path / "r.pt")
    assert resumed.n_images == 12
    changed = [Concepts.from_vectors("3", torch.randn(4, 8), name="v4"), concepts[1]]
    with pytest.raises(ValueError, match="other concepts"):
        miner(changed).load_state(tmp_path / "r.pt")
    with pytest.raises(ValueError, match="concept layers"):
        miner(concepts[:1]).merge(back)
    with pytest.raises(ValueError, match="mines"):
        LayerTopKPatches(model, ["0", "3"], k=3, stats=True).merge(back)


def test_bad_concepts():
    model = _net()
    c = Concepts.from_vectors("3", torch.randn(4, 8), name="v4")
    with pytest.raises(ValueError, match="not mined.*add it to layer"):
        LayerTopKPatches(model, ["0"], concepts=[c])
    with pytest.raises(ValueError, match="distinct names"):
        LayerTopKPatches(model, ["3"], concepts=[c, Concepts.from_vectors("3", torch.randn(2, 8), name="v4")])
    with pytest.raises(TypeError, match="encode"):
        LayerTopKPatches(model, ["3"], concepts=[torch.randn(4, 8)])
    wrong = Concepts.from_vectors("3", torch.randn(4, 6), name="w")  # learned on a 6-channel layer
    with pytest.raises(ValueError, match="channels"):
        LayerTopKPatches(model, ["3"], concepts=[wrong]).mine(_images(2), progress=False)


def test_onnx_runtime_mines_concepts_like_pytorch(tmp_path):
    pytest.importorskip("onnxruntime")
    from captum_topk.onnx import OnnxTopKPatches, export

    model = _net()
    images = _images(8)
    concepts = _concepts()[:2]
    path = tmp_path / "net.onnx"
    export(model, ["0", "3"], path, input_size=16, progress=False)
    ref = LayerTopKPatches(model, ["0", "3"], k=2, concepts=concepts).mine([images], progress=False)
    onnx_miner = OnnxTopKPatches(str(path), ["0", "3"], k=2, concepts=concepts, progress_rf=False,
                                 providers=["CPUExecutionProvider"])
    got = onnx_miner.mine([images], progress=False)
    assert got.layers == ref.layers and onnx_miner.provider == "CPUExecutionProvider"
    assert got.metadata["backend"] == "onnxruntime" and len(got.metadata["concepts"]) == 2
    for layer in ("3:v4", "0:relu3"):
        agree = assert_same_records(got, ref, layer)  # two backends: up to near ties (tests/_tolerance.py)
        if agree[0, 0]:
            assert got.records(layer, 0)[0].box == ref.records(layer, 0)[0].box


def test_run_folder_with_concepts_file_and_relevance(tmp_path):
    from captum_topk.dashboard import channel_overlays
    from captum_topk.runs.folder import open_run
    from captum_topk.runs.mine import mine_run
    from captum_topk.runs.render import render_run
    from captum_topk.runs.spec import RunSpec
    from captum_topk.runs.mine import find_run

    from ._dashboard_fixture import make_images

    make_images(tmp_path / "data", n_per_class=3, size=40)
    cfile = tmp_path / "c.pt"
    Concepts.from_vectors("layer2", torch.randn(3, 128, generator=torch.Generator().manual_seed(0)),
                          name="v3").save(cfile)
    spec = RunSpec(model="resnet18", random_init=True, layers=("layer1",), data=str(tmp_path / "data"), k=3,
                   batch_size=4, input_size=32, backend="torch", stats_bins=8, concepts=(str(cfile),))
    mine_run(spec, tmp_path / "run", progress=False)
    run = open_run(tmp_path / "run")
    assert run.result.layers == ["layer1", "layer2", "layer2:v3"]  # the concepts' layer was added
    assert run.spec.concepts == (str(cfile),) and len(run.spec.concepts_sha1[0]) == 40
    z = run.concepts[0].encode(full_activations(run.model, run.model.layer2,
                                                torch.stack([run.dataset[i][0] for i in range(6)])))
    _assert_twin(run.result, "layer2:v3", z, 3)
    assert run.describe().endswith("concepts layer2:v3")
    rgb = channel_overlays(run, "layer2:v3", 1)
    assert rgb.shape[0] == 3 and rgb.shape[-1] == 3
    assert any("layer2" in p.name and "v3" in p.name
               for p in render_run(run, layers=["layer2:v3"], out_dir=tmp_path / "png"))
    # a concepts file replaced under the same name is another run
    resolved = RunSpec.from_dict(run.settings["spec"])
    assert find_run(resolved, tmp_path / "run") is not None
    Concepts.from_vectors("layer2", torch.randn(3, 128), name="v3").save(cfile)
    assert find_run(resolved.resolve(), tmp_path / "run") is None
    assert "concepts file changed" in resolved.explain(resolved.resolve())
    with pytest.raises(ValueError, match="changed since"):
        open_run(tmp_path / "run").concepts
    # relevance-ranked run: PyTorch backend, recorded in the result
    ranked = RunSpec(model="resnet18", random_init=True, layers=("layer2",), data=str(tmp_path / "data"), k=2,
                     batch_size=4, input_size=32, stats_bins=0, rank_by="gxa", target="predicted")
    mine_run(ranked, tmp_path / "ranked", progress=False)
    run = open_run(tmp_path / "ranked")
    assert run.backend == "torch" and run.result.ranked_by("layer2")["method"] == "LayerGradientXActivation"
    assert "ranked by LayerGradientXActivation relevance toward predicted" in run.describe()
    assert run.result.ranked_by("layer2")["target"] == "predicted"
    with pytest.raises(ValueError, match="go together"):
        RunSpec(rank_by="gxa")
