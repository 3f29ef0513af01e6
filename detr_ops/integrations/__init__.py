"""Adapters that put detr_ops into other codebases.

Each submodule imports its target library only when used (never at ``import detr_ops``), and
none of those libraries is a dependency of detr_ops:

* :mod:`detr_ops.integrations.transformers`: ``enable()`` / ``disable()`` / ``enabled()`` route
  Hugging Face transformers' DETR-family matchers and deformable attention through detr_ops.

mmcv / mmdetection users take :class:`detr_ops.nn.MultiScaleDeformableAttention` (mmcv's module,
same arguments and state-dict keys); see docs/integrations.md.
"""
