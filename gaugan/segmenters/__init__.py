"""Segmenters that score generated images (paper section 4).

- :mod:`gaugan.segmenters.published`: the networks the paper's numbers come from
  (UperNet-101 for ADE20K, DeepLab v2 for COCO-Stuff, DRN-D-105 for Cityscapes), with
  their weight files and strict loading.
- :mod:`gaugan.segmenters.trained`: the compact U-Net the pipeline trains on the real
  images of datasets without a published segmenter (the built-in one, custom ones).

Every segmenter is a :class:`gaugan.segmenters.base.Segmenter`: preprocessing, network
and the map from stored label indices to its classes travel together.
"""

from gaugan.segmenters.base import IGNORE_INDEX, Segmenter

__all__ = ["IGNORE_INDEX", "Segmenter"]
