"""Training: the G and D steps, the loop, checkpoints, EMA, learning-rate schedule, DDP, benchmark.

Paper section 4 ("Implementation details") and docs/SPADE.md section 2: hinge GAN loss with
feature matching (+ VGG, + KL for the VAE), Adam with TTUR, constant then linearly decayed
learning rate, one G step then one D step per batch.
"""
