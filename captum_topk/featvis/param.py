r"""Image parametrization for feature visualization: a Fourier-space image with ``1/f``
frequency scaling, in a decorrelated colour space, squashed to RGB in [0, 1] by a sigmoid.

Optimising raw pixels produces high-frequency noise that drives a channel but shows nothing.
Olah, Mordvintsev & Schubert (2017, "Feature Visualization", Distill) instead optimise

* the image's **2-D Fourier coefficients**, each multiplied by ``1 / max(f, 1 / max(H, W))``
  (``f`` = spatial frequency in cycles per pixel, :func:`spectrum_scale`): with Adam, whose
  steps are about the same size for every parameter, low frequencies then move ``1/f`` times
  faster than high ones, as in natural images (whose amplitude spectrum falls like ``1/f``);
* **decorrelated colours**: the three optimised channels are mapped to RGB by a square root
  ``M`` of the ImageNet RGB covariance (``M M^T = Σ``, :func:`color_sqrt`), so that
  independent unit-variance noise in them becomes noise with natural image colour statistics.

The RGB image is ``sigmoid(M z)``, ``z`` the inverse FFT of the scaled spectrum
(:class:`FourierImage`), so every value is a valid intensity in (0, 1) without clipping.

The ImageNet covariance is ``Σ = V diag(λ) V^T`` with the eigen-decomposition of ImageNet's
RGB pixel covariance published with AlexNet's PCA colour augmentation (Krizhevsky et al.
2012; the values of ``fb.resnet.torch``, :data:`IMAGENET_COLOR_EIGVAL`, ``_EIGVEC``); Lucid's
``color_correlation_svd_sqrt`` is ``V diag(sqrt(λ))`` rounded to two digits.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "IMAGENET_COLOR_EIGVAL",
    "IMAGENET_COLOR_EIGVEC",
    "imagenet_color_covariance",
    "color_sqrt",
    "spectrum_scale",
    "image_to_spectrum",
    "spectrum_to_image",
    "FourierImage",
]

#: Eigenvalues of ImageNet's RGB pixel covariance (RGB in [0, 1]), largest first.
IMAGENET_COLOR_EIGVAL: Tuple[float, float, float] = (0.2175, 0.0188, 0.0045)

#: The matching eigenvectors, one per *column* (rows: R, G, B).
IMAGENET_COLOR_EIGVEC: Tuple[Tuple[float, float, float], ...] = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


def imagenet_color_covariance(dtype: torch.dtype = torch.float64) -> Tensor:
    r"""ImageNet's RGB pixel covariance ``Σ = V diag(λ) V^T``.

    Returns:
        Tensor: ``(3, 3)`` symmetric positive definite (rows / columns R, G, B).
    """
    v = torch.tensor(IMAGENET_COLOR_EIGVEC, dtype=torch.float64)
    lam = torch.tensor(IMAGENET_COLOR_EIGVAL, dtype=torch.float64)
    return (v @ torch.diag(lam) @ v.T).to(dtype)


def color_sqrt(
    method: str = "svd", covariance: Optional[Tensor] = None, normalize: bool = True
) -> Tensor:
    r"""A square root ``M`` of a colour covariance: ``M @ M.T == Σ`` (up to a scale).

    Args:
        method (str): ``"svd"`` (``U diag(sqrt(s))`` from the SVD ``Σ = U diag(s) U^T``, as
            Lucid), ``"symmetric"`` (``U diag(sqrt(s)) U^T``) or ``"cholesky"`` (lower
            triangular ``L``). All three map white noise to noise of covariance ``Σ``.
        covariance (Tensor, optional): ``(3, 3)`` covariance; default
            :func:`imagenet_color_covariance`.
        normalize (bool): divide by the largest column norm (Lucid's convention), so the
            strongest colour direction has unit gain: ``M @ M.T == Σ / max_j ||Σ^{1/2}_j||²``.

    Returns:
        Tensor: ``(3, 3)`` float32; decorrelated colours ``z`` map to RGB logits ``M @ z``.
    """
    cov = imagenet_color_covariance() if covariance is None else covariance.to(torch.float64)
    if cov.shape != (3, 3) or not torch.allclose(cov, cov.T):
        raise ValueError(f"covariance must be a symmetric (3, 3) matrix, got shape {tuple(cov.shape)}.")
    if method in ("svd", "symmetric"):
        u, s, _ = torch.linalg.svd(cov)
        m = u * s.sqrt()
        # Fix each singular vector's sign (the SVD leaves it free): red entry positive, as Lucid.
        sign = torch.where(m[0] < 0, -1.0, 1.0).to(m.dtype)
        m = m * sign
        if method == "symmetric":
            m = m @ (u * sign).T
    elif method == "cholesky":
        m = torch.linalg.cholesky(cov)
    else:
        raise ValueError(f"Unknown method {method!r}: use 'svd', 'symmetric' or 'cholesky'.")
    if normalize:
        m = m / torch.linalg.vector_norm(m, dim=0).max()
    return m.to(torch.float32)


def spectrum_scale(h: int, w: int, decay_power: float = 1.0) -> Tensor:
    r"""Per-coefficient scale ``1 / max(f, 1 / max(h, w)) ** decay_power`` of an ``rfft2``
    spectrum, ``f = sqrt(fy² + fx²)`` in cycles per pixel.

    Args:
        h, w (int): image size.
        decay_power (float): 1 gives the ``1/f`` amplitude spectrum of natural images.

    Returns:
        Tensor: ``(h, w // 2 + 1)`` float32; the DC term gets ``max(h, w) ** decay_power``.
    """
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.rfftfreq(w, dtype=torch.float64)[None, :]
    f = torch.sqrt(fx * fx + fy * fy)
    return (1.0 / f.clamp(min=1.0 / max(h, w)) ** decay_power).to(torch.float32)


def spectrum_to_image(spectrum: Tensor, size: Tuple[int, int], scale: Optional[Tensor] = None) -> Tensor:
    r"""Inverse of :func:`image_to_spectrum`: ``irfft2(scale * spectrum, norm="ortho")``.

    Args:
        spectrum (Tensor): ``(..., h, w // 2 + 1)`` complex, or the same with a trailing
            dimension of 2 (real, imaginary) real-valued.
        size (tuple of int): ``(h, w)`` of the image.
        scale (Tensor, optional): ``(h, w // 2 + 1)`` real factors (:func:`spectrum_scale`).

    Returns:
        Tensor: ``(..., h, w)`` real.
    """
    if not spectrum.is_complex():
        spectrum = torch.view_as_complex(spectrum)
    if scale is not None:
        spectrum = spectrum * scale
    return torch.fft.irfft2(spectrum, s=tuple(size), norm="ortho")


def image_to_spectrum(image: Tensor, scale: Optional[Tensor] = None) -> Tensor:
    r"""``rfft2(image, norm="ortho") / scale`` as real ``(..., h, w // 2 + 1, 2)``: the
    parameters that :func:`spectrum_to_image` maps back to ``image`` exactly.

    Args:
        image (Tensor): ``(..., h, w)`` real.
        scale (Tensor, optional): as in :func:`spectrum_to_image`.
    """
    spec = torch.fft.rfft2(image, norm="ortho")
    if scale is not None:
        spec = spec / scale
    return torch.view_as_real(spec).contiguous()


def _inverse_sigmoid(x: Tensor, eps: float = 1e-4) -> Tensor:
    x = x.clamp(eps, 1 - eps)
    return torch.log(x) - torch.log1p(-x)


class FourierImage(nn.Module):
    r"""A batch of RGB images parametrised by scaled Fourier coefficients in decorrelated
    colour space: ``forward() = sigmoid(M · irfft2(scale · spectrum) / 4)``, in (0, 1).

    The single parameter ``spectrum`` has shape ``(n, 3, h, w // 2 + 1, 2)`` (real, imaginary).
    Each image's initial spectrum is drawn from its own ``torch.Generator`` (the global RNG
    is never used), so an image does not depend on the other images of the batch.

    Args:
        n (int): number of images.
        size (int or (int, int)): ``(h, w)``.
        generators (sequence of torch.Generator, optional): one per image for the initial
            noise; default: ``torch.Generator().manual_seed(i)`` for image ``i``.
        sd (float): standard deviation of the initial spectrum (small: a grey start).
        decay_power (float): exponent of :func:`spectrum_scale`.
        decorrelate (bool): map colours with :func:`color_sqrt` (else ``M = I``).
        color_method (str): ``method`` of :func:`color_sqrt`.
        device (torch.device, optional): where the parameter lives.

    Example::

        >>> img = FourierImage(4, 128, generators=[torch.Generator().manual_seed(i) for i in range(4)])
        >>> img().shape       # (4, 3, 128, 128), values in (0, 1), differentiable in img.spectrum
    """

    #: Lucid's constant: the inverse FFT is divided by it before the colour map (a smaller
    #: initial contrast and a gentler sigmoid).
    SATURATION = 4.0
    #: The constructor arguments that decide the images (the rest say how many and where).
    CONFIG_ARGS = ("sd", "decay_power", "decorrelate", "color_method")

    @classmethod
    def config(cls, **settings: Any) -> Dict[str, Any]:
        r"""Everything that decides the parametrization, JSON-able, without building one: the
        constructor's defaults for :attr:`CONFIG_ARGS` (read from its signature, so a changed
        default changes the result) overridden by ``settings``, :attr:`SATURATION` and the
        colour matrix itself. Feature-visualization cache keys are made of it.

        Args:
            **settings: values of :attr:`CONFIG_ARGS` that differ from the defaults.
        Returns:
            dict
        Example::
            >>> FourierImage.config(decorrelate=False)["decorrelate"]
            False
        """
        unknown = set(settings) - set(cls.CONFIG_ARGS)
        if unknown:
            raise TypeError(f"Unknown FourierImage setting(s) {sorted(unknown)}; known: {cls.CONFIG_ARGS}.")
        params = inspect.signature(cls.__init__).parameters
        out: Dict[str, Any] = {"param": cls.__qualname__, "saturation": float(cls.SATURATION)}
        out.update({name: params[name].default for name in cls.CONFIG_ARGS})
        out.update(settings)
        m = color_sqrt(out["color_method"]) if out["decorrelate"] else torch.eye(3)
        out["color"] = [[round(float(v), 6) for v in row] for row in m.tolist()]
        return out

    def __init__(
        self,
        n: int,
        size: int | Tuple[int, int],
        generators: Optional[Sequence[torch.Generator]] = None,
        sd: float = 0.01,
        decay_power: float = 1.0,
        decorrelate: bool = True,
        color_method: str = "svd",
        device: Optional[torch.device] = None,
    ) -> None:
        super().__init__()
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        if n < 1 or h < 2 or w < 2:
            raise ValueError(f"Need n >= 1 images of at least 2 x 2 px, got n={n}, size={(h, w)}.")
        if generators is None:
            generators = [torch.Generator().manual_seed(i) for i in range(n)]
        if len(generators) != n:
            raise ValueError(f"Got {len(generators)} generators for {n} images.")
        self.size = (h, w)
        shape = (3, h, w // 2 + 1, 2)
        init = torch.stack([torch.randn(shape, generator=g) for g in generators]) * sd
        self.spectrum = nn.Parameter(init.to(device))
        self.register_buffer("scale", spectrum_scale(h, w, decay_power).to(device))
        m = color_sqrt(color_method) if decorrelate else torch.eye(3)
        self.register_buffer("color", m.to(device))

    def logits(self) -> Tensor:
        r"""RGB logits ``M · irfft2(scale · spectrum) / SATURATION``: ``(n, 3, h, w)``."""
        z = spectrum_to_image(self.spectrum, self.size, self.scale) / self.SATURATION
        return torch.einsum("rc,nchw->nrhw", self.color, z)

    def forward(self) -> Tensor:
        r"""The images: ``(n, 3, h, w)`` RGB in (0, 1)."""
        return torch.sigmoid(self.logits())

    @torch.no_grad()
    def set_images(self, images: Tensor) -> None:
        r"""Set the parameter so that :meth:`forward` returns ``images`` (clamped to
        ``[1e-4, 1 - 1e-4]``): the inverse of the whole parametrization.

        Args:
            images (Tensor): ``(n, 3, h, w)`` RGB in [0, 1].
        """
        if tuple(images.shape) != (self.spectrum.shape[0], 3, *self.size):
            raise ValueError(f"images must be {(self.spectrum.shape[0], 3, *self.size)}, got {tuple(images.shape)}.")
        logits = _inverse_sigmoid(images.to(self.spectrum.device, torch.float64))
        z = torch.einsum("cr,nrhw->nchw", torch.linalg.inv(self.color.double()), logits)
        spec = image_to_spectrum(z * self.SATURATION, self.scale.double())
        self.spectrum.copy_(spec.to(self.spectrum.dtype))

