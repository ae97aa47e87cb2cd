"""Model zoo: every network of the reproduced tables, built by name.

    from comhe import models
    net = models.build("cnn9", num_classes=100)                 # the CoMHE/MHE CIFAR-100 network
    net = models.build("cnn9", 10, width=1, in_channels=1, image_size=28)   # Fashion-MNIST, t = 1
    models.option_defaults("resnet20")                          # {'in_channels': 3, 'width': 1}
    net = models.build("gcn", 7, in_features=1433)              # Kipf & Welling's GCN: net(features, A_hat)

A constructor is registered as ``f(num_classes, *, option=default, ...)``; its keyword-only parameters are the
model's options, so the signature is the single place an option and its default are declared.

Regularisers find their layers by walking ``named_modules()`` in registration order (``comhe/layers.py``), so every
model here registers its input convolution first and its classifier last.
"""
from __future__ import annotations

from . import plain_cnn, resnet_cifar, resnet_imagenet  # noqa: F401  (each registers its constructors)
from . import gcn  # noqa: F401  (graphs: features [N, F] and A_hat [N, N] -> [N, K])
from . import pointnet, pointnet2  # noqa: F401  (pointnet, pointnet_tnet; pointnet2_ssg)
from .factory import MODELS, build, names, option_defaults  # noqa: F401
