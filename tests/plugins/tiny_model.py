"""The tiny model of the test plugin: a two-layer conv encoder (``dim``-D embedding) trained to
reconstruct the 8×8 average-pooled input (a real, if small, self-supervised objective)."""

import torch
import torch.nn.functional as F
from torch import nn

from morphobench.models import EmbeddingModel


class TinyAE(EmbeddingModel):
    def __init__(self, in_chans: int = 3, dim: int = 8, width: int = 8, **_):
        super().__init__()
        self.enc = nn.Sequential(nn.Conv2d(in_chans, width, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, dim))
        self.dec = nn.Linear(dim, in_chans * 64)
        self.in_chans = in_chans

    def embed(self, image):
        return self.enc(image)

    def forward(self, batch):
        x = batch["image"]
        target = F.adaptive_avg_pool2d(x, 8).flatten(1)
        recon = self.dec(self.embed(x))
        return {"loss": F.mse_loss(recon, target)}


def tiny_ae(in_chans: int = 3, **kw):
    return TinyAE(in_chans=in_chans, **kw)
