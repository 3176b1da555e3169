r"""What a dashboard job mines: :class:`JobSpec` (model, checkpoint, layers, data, k, ...)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple


from ..models.ecosystem import parse_model_spec
from ..models.registry import DEFAULT_LAYERS, DEFAULT_MODEL
from ..runs.spec import model_label
from ..utils.naming import slug

__all__ = [
    "FACTORIES_ENV",
    "MODEL_SOURCES",
    "allowed_factories",
    "model_source",
    "JOB_FORMAT",
    "JobSpec",
    "LIMITS",
    "DEFAULT_SPEC",
]



#: The environment variable listing the ``package.module:factory`` models a dashboard job may
#: build (comma-separated): a factory runs Python code, so only those the operator named.
FACTORIES_ENV = "CAPTUM_TOPK_MODEL_FACTORIES"

#: Where a job's model comes from (the Data and jobs page's choices) -> what ``JobSpec.model`` holds.
MODEL_SOURCES = {
    "builtin": "a built-in name (weights shipped offline) or a torchvision architecture with a checkpoint",
    "checkpoint": "a checkpoint under the checkpoints root (model: its architecture, or '' when it records it)",
    "timm": "'timm:NAME' (timm.create_model(NAME, pretrained=False)), weights from a checkpoint or random",
    "hf": "'hf:DIR' with DIR a save_pretrained folder under the checkpoints root",
    "factory": f"'package.module:factory', one of those listed in ${FACTORIES_ENV}",
    "onnx": "an ONNX file under the onnx root, mined with ONNX Runtime",
}


def allowed_factories(env: Optional[Mapping[str, str]] = None) -> List[str]:
    r"""The ``package.module:factory`` models dashboard jobs may build: those listed in
    ``$CAPTUM_TOPK_MODEL_FACTORIES`` (comma-separated; none by default, since building one
    imports and runs that Python code)."""
    text = (os.environ if env is None else env).get(FACTORIES_ENV, "")
    return [t.strip() for t in text.split(",") if t.strip() and parse_model_spec(t.strip()).kind == "factory"]


def model_source(spec: "JobSpec") -> str:
    r"""Which of :data:`MODEL_SOURCES` a job's model comes from."""
    if spec.onnx:
        return "onnx"
    kind = parse_model_spec(spec.model).kind if spec.model else "named"
    if kind in ("timm", "hf", "factory"):
        return kind
    return "checkpoint" if spec.checkpoint else "builtin"


JOB_FORMAT = 3  # bump when what a job writes changes: older runs are then mined again

#: What a dashboard user may ask for (the app's widgets have the same bounds; a tampered session
#: or a script is refused here): name -> (lowest, highest).
LIMITS = {"k": (1, 64), "batch_size": (1, 256), "max_images": (1, 10_000_000), "input_size": (16, 1024),
          "layers": (1, 16)}


@dataclass(frozen=True)
class JobSpec:
    r"""What a dashboard mining job mines. Paths are relative to their roots.

    Attributes:
        model (str): built-in name (:func:`captum_topk.models.list_models`), torchvision
            architecture, ``"timm:NAME"``, ``"hf:DIR"`` (``DIR`` a ``save_pretrained`` folder
            relative to the checkpoints root) or ``"package.module:factory"`` (one of
            :func:`allowed_factories`); ignored when ``onnx`` is set. See :data:`MODEL_SOURCES`.
        checkpoint (str, optional): weights under the checkpoints root (with ``model`` a
            built-in, architecture, ``timm:`` or factory name, or ``model=""`` when the
            checkpoint names its architecture).
        onnx (str, optional): an ONNX file under the onnx root: mined with ONNX Runtime.
        layers (tuple of str): layer names (tensor names for ONNX).
        data (str, optional): an image folder under the data root; None: the packaged photos.
        k (int): records per channel.
        batch_size (int): images per batch.
        input_size (int, optional): crop size instead of the model's own.
        max_images (int, optional): mine only the first images.
        backend (str): ``"auto"`` (ONNX Runtime on CPU when the model exports faithfully: see
            :mod:`captum_topk.runs.backend`), ``"torch"`` or ``"onnxruntime"``; an ONNX file is
            always mined with ONNX Runtime.
        concepts (tuple of str): concepts files under the runs root, mined beside the channels
            as layers ``"<layer>:<name>"`` (``docs/concepts_mining.md``).
    """

    model: str = DEFAULT_MODEL
    checkpoint: Optional[str] = None
    onnx: Optional[str] = None
    layers: Tuple[str, ...] = DEFAULT_LAYERS
    data: Optional[str] = None
    k: int = 9
    batch_size: int = 16
    input_size: Optional[int] = None
    max_images: Optional[int] = None
    backend: str = "auto"
    concepts: Tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(str(v) for v in self.layers))
        object.__setattr__(self, "concepts", tuple(str(v) for v in self.concepts))
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if name == "layers":
                value = len(value)
            elif value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                what = "the number of layers" if name == "layers" else name
                raise ValueError(f"{what} must be between {low} and {high} for a dashboard job, got {value!r}.")
        if self.backend not in ("auto", "torch", "onnxruntime"):
            raise ValueError(f"backend must be 'auto', 'torch' or 'onnxruntime', got {self.backend!r}.")

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["layers"] = list(self.layers)
        d["concepts"] = list(self.concepts)
        return d

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "JobSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw["layers"] = tuple(kw.get("layers", DEFAULT_LAYERS))
        kw["concepts"] = tuple(kw.get("concepts", ()))
        return cls(**kw)

    def key(self) -> str:
        r"""A short hash of the settings (and of the job format): equal specs share one run folder."""
        d = self.to_dict()
        if not d["concepts"]:  # jobs without concepts keep the folders they had before the field
            del d["concepts"]
        text = json.dumps({**d, "format": JOB_FORMAT}, sort_keys=True)
        return hashlib.sha1(text.encode()).hexdigest()[:8]

    def run_name(self) -> str:
        r"""The run folder's name: ``<model>-<data>-<hash>``."""
        what = Path(self.onnx).stem + "-onnx" if self.onnx else (model_label(self.model) if self.model else "checkpoint")
        if self.checkpoint and not self.onnx:
            what += "+" + Path(self.checkpoint).stem
        return f"{slug(what, keep='_.-', max_len=48, sep='-')}-{slug(self.data or 'demo', keep='_.-', max_len=48, sep='-')}-{self.key()}"


DEFAULT_SPEC = JobSpec()
