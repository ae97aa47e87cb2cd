"""Datasets by name, one module per family: ``comhe.data.build(name, root, device, download, **options)``.

==================  ===============================================================================
module              what
==================  ===============================================================================
``bundle.py``       ``DataBundle`` (what the engine trains on), the ``DATASETS`` registry, ``build``
``cifar.py``        ``cifar10``, ``cifar100``, ``synthetic`` (tiny CIFAR, real format; ``pickles.py`` reads them)
``fashion_mnist.py````fashion_mnist``
``imagenet.py``     ``imagenet``, ``synthetic_imagenet``
``imagefolder.py``  ``image_folder``: small-image class folders as a CIFAR-style tensor bundle
``tensor_cache.py`` the checked cache of decoded images in the data root
``cifar_export.py`` ``cifar10_jpeg_export``: the CIFAR-10 JPEG export, an ``image_folder`` preset
``planetoid.py``    ``cora``, ``citeseer``, ``pubmed``, ``synthetic_planetoid`` (graphs; ``pickles.py`` reads them)
``augment.py``      the official CIFAR augmentation, batched on the device
``streams.py``      resumable batch streams: ``TensorLoader`` (data on the device), ``LoaderStream``
``synthetic.py``    writers of small learnable datasets in the real on-disk formats
``modelnet.py``     ``modelnet40``, ``synthetic_modelnet40`` (HDF5 point clouds; h5py: the ``points`` extra)
``points.py``       point-cloud batches and the PointNet / PointNet++ augmentations on the device
``synthetic_points.py`` point clouds written in the ModelNet-40 HDF5 layout
``archives.py``     safe archive extraction: bounded, one release folder, extracted aside and moved into place
==================  ===============================================================================

This layer imports the library's ``registry`` and nothing of models, training or the suite.
"""
from __future__ import annotations

from . import cifar, fashion_mnist, imagenet, imagefolder  # noqa: F401  (each registers its datasets)
from . import planetoid, synthetic_planetoid  # noqa: F401  (graphs for node classification)
from . import modelnet  # noqa: F401  (modelnet40, synthetic_modelnet40)
from . import cifar_export  # noqa: F401  (cifar10_jpeg_export: an image_folder preset)
from .bundle import (DATASETS, DataBundle, DatasetUnavailable, build, data_root, declared_num_classes,  # noqa: F401
                     locate, offline, option_defaults, removed_if_failed, takes_workers, tensor_bundle)
from .bundle import NODE_DATASETS, probe, task  # noqa: F401
from .planetoid import GraphBundle  # noqa: F401
from .streams import loader_workers  # noqa: F401
