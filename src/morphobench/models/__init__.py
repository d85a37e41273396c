"""Models (TEAMs, MAE-ViT, CA-MAE, MU-Net, WSL DenseNet, Campfire).

Importing this package makes torchvision/timm usable on CPU-only torch (see morphobench._compat).
"""

from morphobench._compat import ensure_torchvision

ensure_torchvision()
