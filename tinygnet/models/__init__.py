"""Networks built from ``tinygnet.nn``: GoogLeNet and its building blocks, and the BVLC
GoogLeNet caffemodel loaded into it."""
from .caffe_googlenet import load_caffe_googlenet
from .googlenet import (INITS, ConvUnit, GoogLeNet, GoogLeNetLoss, GoogLeNetOutputs, Inception,
                        InceptionAux, googlenet_loss, scale_channels)

__all__ = ["GoogLeNet", "Inception", "InceptionAux", "ConvUnit", "GoogLeNetOutputs",
           "GoogLeNetLoss", "googlenet_loss", "scale_channels", "INITS", "load_caffe_googlenet"]
