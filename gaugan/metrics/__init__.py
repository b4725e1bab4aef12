"""Evaluation metrics of paper section 4: FID (:mod:`gaugan.metrics.fid`) and the
segmentation scores mIoU / pixel accuracy (:mod:`gaugan.metrics.segmentation`)."""
