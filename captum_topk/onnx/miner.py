r"""``OnnxTopKPatches``: the :class:`~captum_topk.LayerTopKPatches` facade over the ONNX Runtime
source (:class:`~captum_topk.onnx.source.OnnxSource`)."""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from captum.attr import LayerAttribution

from ..core.miner import LayerTopKPatches, StatsSpec, _check_device_ids
from ..core.sources.concepts import ConceptSource
from .graph import ModelLike
from .source import OnnxSource

__all__ = ["OnnxTopKPatches"]


class OnnxTopKPatches(LayerTopKPatches):
    r"""
    Dataset top-k patches of an ONNX model, mined through ONNX Runtime.

    Same contract and same result format as :class:`~captum_topk.LayerTopKPatches`
    (``update`` / ``compute`` / ``reset`` / ``merge`` / ``mine`` / ``save_state`` /
    ``load_state``; ordering, ties, ``distinct_images``, bottom-k, statistics), so its
    :class:`~captum_topk.TopKResult` can be compared with, merged with or replace one mined
    in PyTorch: the same facade over another activation source. ``attribute`` returns the
    activations.

    Receptive fields: read from the export sidecar (``<file>.onnx.json``) for the size it
    was exported at, else measured through ONNX Runtime
    (:func:`~captum_topk.onnx.runtime.onnx_receptive_fields`, cached), on the first batch.
    """

    def __init__(
        self,
        onnx_model: ModelLike,
        layer: Optional[Union[str, Sequence[str]]] = None,
        device_ids: Union[None, List[int]] = None,
        *,
        k: int = 9,
        distinct_images: bool = True,
        stats: StatsSpec = False,
        providers: Optional[Sequence[str]] = None,
        input_layout: str = "auto",
        activation_layout: str = "NCHW",
        threads: Optional[int] = None,
        rf_batch_size: int = 16,
        progress_rf: bool = True,
        layout: Union[str, Dict[str, str]] = "auto",
        token_grid: Optional[Tuple[int, int]] = None,
        prefix_tokens: Optional[int] = None,
        concepts: Optional[Sequence[Any]] = None,
    ) -> None:
        r"""
        Args:
            onnx_model (str, bytes or onnx.ModelProto): an ONNX file (its sidecar
                ``<file>.json`` is read when present), its bytes or proto.
            layer (str or list of str, optional): exported layer names (graph outputs such
                as ``"features.3"``) or any intermediate tensor / node name (list them with
                :func:`describe_onnx_layers` or ``captum-topk layers MODEL.onnx``). Default:
                every layer the sidecar lists.
            device_ids: accepted for the argument order of Captum's layer methods; ONNX Runtime
                picks its device through ``providers``, so it must be None.
            k (int, keyword-only): records per channel (top and bottom). Default: 9.
            distinct_images (bool), stats: as in :class:`~captum_topk.LayerTopKPatches`.
            providers (list of str, optional): ONNX Runtime execution providers in order of
                preference; default ``["CUDAExecutionProvider", "CPUExecutionProvider"]``
                filtered to those available. The one used is :attr:`provider`.
            input_layout (str): ``"auto"``, ``"NCHW"`` or ``"NHWC"``; batches are always
                given (N, C, H, W) and transposed for an NHWC model.
            activation_layout (str): ``"NCHW"`` (default) or ``"NHWC"`` for models whose
                intermediate tensors are channels-last.
            threads (int, optional): ONNX Runtime intra-op threads.
            rf_batch_size (int): images per run of the receptive-field probe.
            progress_rf (bool): tqdm bar while probing receptive fields.
            layout, token_grid, prefix_tokens: as in :class:`~captum_topk.LayerTopKPatches`
                (the export sidecar records them for exported layers).
            concepts (list, optional): concept directions mined beside the channels, each as a
                layer ``f"{c.layer}:{c.name}"``, as in :class:`~captum_topk.LayerTopKPatches`
                (the encoding runs in PyTorch on ONNX Runtime's activations).
        Example::
            >>> from captum_topk.onnx import export, OnnxTopKPatches
            >>> exp = export(model, ["layer2", "layer3"], "onnx_models/r18.onnx", input_size=224)
            >>> miner = OnnxTopKPatches(exp.path, ["layer2", "layer3"], k=9)
            >>> result = miner.mine(loader)
            >>> miner.provider, result.metadata["provider"]
            ('CPUExecutionProvider', 'CPUExecutionProvider')
        """
        _check_device_ids(device_ids)
        if device_ids:
            raise ValueError("ONNX Runtime chooses its device through providers=[...], not device_ids.")
        source = OnnxSource(onnx_model, layer, providers=providers, input_layout=input_layout,
                            activation_layout=activation_layout, threads=threads,
                            rf_batch_size=rf_batch_size, progress=progress_rf, layout=layout,
                            token_grid=token_grid, prefix_tokens=prefix_tokens)
        if concepts:
            source = ConceptSource(source, concepts)
        LayerAttribution.__init__(self, source, source.names)
        self._bind(source, k=k, distinct_images=distinct_images, stats=stats,
                   single=isinstance(layer, str))

    @property
    def provider(self) -> str:
        r"""The execution provider ONNX Runtime uses."""
        return self.source.provider

    @property
    def providers(self) -> List[str]:
        return list(self.source.providers)

    @property
    def onnx_path(self) -> Any:
        return self.source.onnx_path

    @property
    def sidecar(self) -> Any:
        return self.source.sidecar
