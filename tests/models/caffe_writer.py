"""Synthetic caffemodels for the tests, written by an encoder independent of tinygnet's reader.

The ``protobuf`` package serialises them. Caffe's messages are declared here,
at run time, from a descriptor (the fields a caffemodel of either format
carries, their numbers as in Caffe's ``caffe.proto``), including fields the
reader has no use for and must skip: tops and bottoms, V1's blobs_lr, the
convolution parameters, the phase.

``googlenet_layers(state)`` lays a tinygnet GoogLeNet state dict out as the
BVLC ``train_val`` net does, in Caffe's order, with the layers that have no
weights (data, ReLUs, pools, concats, losses, accuracies) in between; the
Caffe names are written out here, apart from the library's table.
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

F = descriptor_pb2.FieldDescriptorProto
OPTIONAL, REPEATED = F.LABEL_OPTIONAL, F.LABEL_REPEATED

V1_TYPES = {"Accuracy": 1, "Concat": 3, "Convolution": 4, "Data": 5, "Dropout": 6,
            "InnerProduct": 14, "LRN": 15, "Pooling": 17, "ReLU": 18, "Softmax": 20,
            "SoftmaxWithLoss": 21}


def _message(file, name, fields):
    message = file.message_type.add(name=name)
    for field_name, number, label, kind, extra in fields:
        field = message.field.add(name=field_name, number=number, label=label, type=kind)
        if kind in (F.TYPE_MESSAGE, F.TYPE_ENUM):
            field.type_name = f".caffe.{extra}"
        elif extra == "packed":
            field.options.packed = True
    return message


def _caffe_messages():
    file = descriptor_pb2.FileDescriptorProto(name="test_caffe.proto", package="caffe",
                                              syntax="proto2")
    _message(file, "BlobShape", [("dim", 1, REPEATED, F.TYPE_INT64, "packed")])
    _message(file, "BlobProto", [
        ("shape", 7, OPTIONAL, F.TYPE_MESSAGE, "BlobShape"),
        ("data", 5, REPEATED, F.TYPE_FLOAT, "packed"),
        ("diff", 6, REPEATED, F.TYPE_FLOAT, "packed"),
        ("double_data", 8, REPEATED, F.TYPE_DOUBLE, "packed"),
        ("num", 1, OPTIONAL, F.TYPE_INT32, None), ("channels", 2, OPTIONAL, F.TYPE_INT32, None),
        ("height", 3, OPTIONAL, F.TYPE_INT32, None), ("width", 4, OPTIONAL, F.TYPE_INT32, None)])
    _message(file, "ConvolutionParameter", [
        ("num_output", 1, OPTIONAL, F.TYPE_UINT32, None),
        ("pad", 3, REPEATED, F.TYPE_UINT32, None),
        ("kernel_size", 4, REPEATED, F.TYPE_UINT32, None),
        ("stride", 6, REPEATED, F.TYPE_UINT32, None)])
    layer_type = file.enum_type.add(name="LayerType")
    for name, number in V1_TYPES.items():
        layer_type.value.add(name=name.upper(), number=number)
    layer_type.value.add(name="NONE", number=0)
    _message(file, "V1LayerParameter", [
        ("bottom", 2, REPEATED, F.TYPE_STRING, None), ("top", 3, REPEATED, F.TYPE_STRING, None),
        ("name", 4, OPTIONAL, F.TYPE_STRING, None),
        ("type", 5, OPTIONAL, F.TYPE_ENUM, "LayerType"),
        ("blobs", 6, REPEATED, F.TYPE_MESSAGE, "BlobProto"),
        ("blobs_lr", 7, REPEATED, F.TYPE_FLOAT, None),          # unpacked: fixed32 fields
        ("weight_decay", 8, REPEATED, F.TYPE_FLOAT, None),
        ("convolution_param", 10, OPTIONAL, F.TYPE_MESSAGE, "ConvolutionParameter")])
    _message(file, "LayerParameter", [
        ("name", 1, OPTIONAL, F.TYPE_STRING, None), ("type", 2, OPTIONAL, F.TYPE_STRING, None),
        ("bottom", 3, REPEATED, F.TYPE_STRING, None), ("top", 4, REPEATED, F.TYPE_STRING, None),
        ("loss_weight", 5, REPEATED, F.TYPE_FLOAT, None),
        ("blobs", 7, REPEATED, F.TYPE_MESSAGE, "BlobProto"),
        ("phase", 10, OPTIONAL, F.TYPE_INT32, None),
        ("convolution_param", 106, OPTIONAL, F.TYPE_MESSAGE, "ConvolutionParameter")])
    _message(file, "NetParameter", [
        ("name", 1, OPTIONAL, F.TYPE_STRING, None),
        ("layers", 2, REPEATED, F.TYPE_MESSAGE, "V1LayerParameter"),
        ("input", 3, REPEATED, F.TYPE_STRING, None),
        ("layer", 100, REPEATED, F.TYPE_MESSAGE, "LayerParameter")])
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("caffe.NetParameter"))


NetParameter = _caffe_messages()


def encode(layers, version) -> bytes:
    """Serialise ``layers``, a list of ``(name, type, arrays)``, as a NetParameter.

    ``arrays`` are in tinygnet's shapes (conv out x in x KH x KW, fc out x in,
    bias out). Version 1 stores them with the legacy num/channels/height/width
    fields (an fc weight as 1 x 1 x out x in, a bias as 1 x 1 x 1 x out), as
    Caffe did in 2014; version 2 with a BlobShape of the array's own dims.
    """
    net = NetParameter(name="GoogleNet", input=["data"])
    for name, kind, arrays in layers:
        if version == 1:
            layer = net.layers.add(name=name, type=V1_TYPES[kind], bottom=["x"], top=[name])
            layer.blobs_lr.extend([1.0, 2.0][:len(arrays)])
            layer.weight_decay.extend([1.0, 0.0][:len(arrays)])
        else:
            layer = net.layer.add(name=name, type=kind, bottom=["x"], top=[name], phase=0)
        if kind == "Convolution" and arrays and arrays[0].ndim == 4:
            layer.convolution_param.num_output = arrays[0].shape[0]
            layer.convolution_param.kernel_size.append(arrays[0].shape[2])
        for array in arrays:
            blob = layer.blobs.add()
            if version == 1:
                legacy = (1,) * (4 - array.ndim) + array.shape
                blob.num, blob.channels, blob.height, blob.width = legacy
            else:
                blob.shape.dim.extend(array.shape)
            blob.data.extend(array.ravel().tolist())
    return net.SerializeToString()


def write(path, layers, version):
    with open(path, "wb") as f:
        f.write(encode(layers, version))
    return path


# The BVLC train_val net, in its order: (Caffe name, tinygnet layer or None, Caffe type).
STEM = [("data", None, "Data"),
        ("conv1/7x7_s2", "conv1", "Convolution"), ("conv1/relu_7x7", None, "ReLU"),
        ("pool1/3x3_s2", None, "Pooling"), ("pool1/norm1", None, "LRN"),
        ("conv2/3x3_reduce", "conv2_reduce", "Convolution"),
        ("conv2/relu_3x3_reduce", None, "ReLU"),
        ("conv2/3x3", "conv2", "Convolution"), ("conv2/relu_3x3", None, "ReLU"),
        ("conv2/norm2", None, "LRN"), ("pool2/3x3_s2", None, "Pooling")]


def inception(module):       # "4c" -> the layers of inception_4c
    ours = f"inception{module}"
    return [(f"inception_{module}/1x1", f"{ours}.branch1", "Convolution"),
            (f"inception_{module}/relu_1x1", None, "ReLU"),
            (f"inception_{module}/3x3_reduce", f"{ours}.branch2_reduce", "Convolution"),
            (f"inception_{module}/relu_3x3_reduce", None, "ReLU"),
            (f"inception_{module}/3x3", f"{ours}.branch2", "Convolution"),
            (f"inception_{module}/relu_3x3", None, "ReLU"),
            (f"inception_{module}/5x5_reduce", f"{ours}.branch3_reduce", "Convolution"),
            (f"inception_{module}/relu_5x5_reduce", None, "ReLU"),
            (f"inception_{module}/5x5", f"{ours}.branch3", "Convolution"),
            (f"inception_{module}/relu_5x5", None, "ReLU"),
            (f"inception_{module}/pool", None, "Pooling"),
            (f"inception_{module}/pool_proj", f"{ours}.branch4", "Convolution"),
            (f"inception_{module}/relu_pool_proj", None, "ReLU"),
            (f"inception_{module}/output", None, "Concat")]


def aux_head(loss, head):    # "loss1", "aux1"
    return [(f"{loss}/ave_pool", None, "Pooling"),
            (f"{loss}/conv", f"{head}.conv", "Convolution"), (f"{loss}/relu_conv", None, "ReLU"),
            (f"{loss}/fc", f"{head}.fc1", "InnerProduct"), (f"{loss}/relu_fc", None, "ReLU"),
            (f"{loss}/drop_fc", None, "Dropout"),
            (f"{loss}/classifier", f"{head}.fc2", "InnerProduct"),
            (f"{loss}/loss", None, "SoftmaxWithLoss"), (f"{loss}/top-1", None, "Accuracy")]


def bvlc_layout(aux=True):
    layers = STEM + inception("3a") + inception("3b") + [("pool3/3x3_s2", None, "Pooling")]
    layers += inception("4a") + (aux_head("loss1", "aux1") if aux else [])
    layers += inception("4b") + inception("4c") + inception("4d")
    layers += aux_head("loss2", "aux2") if aux else []
    layers += inception("4e") + [("pool4/3x3_s2", None, "Pooling")]
    layers += inception("5a") + inception("5b")
    layers += [("pool5/7x7_s1", None, "Pooling"), ("pool5/drop_7x7_s1", None, "Dropout"),
               ("loss3/classifier", "fc", "InnerProduct"),
               ("loss3/loss3", None, "SoftmaxWithLoss"), ("loss3/top-1", None, "Accuracy")]
    return layers


def googlenet_layers(state, aux=True):
    """The ``(name, type, arrays)`` list of a BVLC GoogLeNet file holding ``state``'s weights."""
    return [(name, kind, [] if ours is None else [state[f"{ours}.weight"], state[f"{ours}.bias"]])
            for name, ours, kind in bvlc_layout(aux)]
