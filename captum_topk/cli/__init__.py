r"""The ``captum-topk`` command line: a thin layer over :mod:`captum_topk.runs`."""

from .main import build_parser, main

__all__ = ["main", "build_parser"]
