"""Data: CIFAR-10 (find, download, unpack, load), a fast, resumable input pipeline, and
photos in as the BVLC ImageNet models take them (``load_image``, ``imagenet_classes``).

    from tinygnet.data import CIFAR10, DataLoader
    train = CIFAR10(args.data, train=True)          # images uint8 N x 3 x 32 x 32
    loader = DataLoader(train, batch_size=128, shuffle=True, augment=True, seed=0)
    for images, labels in loader:                   # float32 NCHW, int64
        ...
"""
from .cifar import (CIFAR10, CorruptDatasetError, DatasetError, DatasetNotFoundError,
                    download_cifar10, prepare_cifar10, resolve_data_root, unpack_archive)
from .imagenet import BVLC_MEAN_BGR, imagenet_classes, load_image
from .loader import DataLoader
from .transforms import (CIFAR10_MEAN, CIFAR10_STD, Normalize, crop, horizontal_flip,
                         random_crop, random_horizontal_flip)

__all__ = ["CIFAR10", "DataLoader", "DatasetError", "DatasetNotFoundError", "CorruptDatasetError",
           "resolve_data_root", "prepare_cifar10", "download_cifar10", "unpack_archive",
           "Normalize", "crop", "horizontal_flip", "random_crop", "random_horizontal_flip",
           "CIFAR10_MEAN", "CIFAR10_STD", "load_image", "imagenet_classes", "BVLC_MEAN_BGR"]
