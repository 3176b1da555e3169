r"""Feature visualization by optimisation: what a channel responds to when an image is
*optimised* for it (Olah, Mordvintsev & Schubert 2017), beside the dataset top-k patches
(parts of real images) that :class:`~captum_topk.LayerTopKPatches` mines.

Four separable pieces, as in Lucid / Lucent's ``optvis``:

* :mod:`.param`: the image parametrization (Fourier coefficients scaled by ``1/f``,
  decorrelated ImageNet colours, sigmoid to [0, 1]);
* :mod:`.transforms`: random pad / jitter / scale / rotate at every step, from per-image
  generators, and a final fit to the input size the model needs;
* :mod:`.objectives`: per-image objectives that add and scale like numbers (channels, neurons,
  directions in channel space);
* :mod:`.render`: the Adam loop and :func:`visualize`.

:mod:`.cache` keeps results in a folder (:func:`cached_visualize`); :mod:`.sheet` draws them
beside patch grids.

Example::

    >>> from captum_topk.featvis import visualize
    >>> vis = visualize(model, "features.7", [3, 12], info=info, size=64, steps=32)
    >>> vis.images.shape        # (2, 3, 64, 64) RGB in [0, 1]
"""

from .cache import cached_channels, cached_visualize, model_digest
from .layouts import layer_layout, model_input_size
from .objectives import Objective, channel, direction, diversity, neuron
from .param import FourierImage, color_sqrt, imagenet_color_covariance, spectrum_scale
from .render import FeatureVisualization, responses, visualize
from .sheet import sheet
from .transforms import Compose, Fit, Jitter, Pad, Rotate, Scale, default_transforms

__all__ = [
    "visualize",
    "FeatureVisualization",
    "responses",
    "cached_visualize",
    "cached_channels",
    "model_digest",
    "layer_layout",
    "model_input_size",
    "sheet",
    "Objective",
    "channel",
    "neuron",
    "direction",
    "diversity",
    "FourierImage",
    "color_sqrt",
    "imagenet_color_covariance",
    "spectrum_scale",
    "Compose",
    "Pad",
    "Jitter",
    "Scale",
    "Rotate",
    "Fit",
    "default_transforms",
]
