"""Module machinery: registration, traversal, modes, dtype moves, state dicts, repr, hooks."""
from collections import OrderedDict

import numpy as np
import pytest

import tinygnet
from tinygnet import nn
from tinygnet.nn import Module, Parameter, Sequential
from tinygnet.tensor import Tensor


class Block(Module):
    """A weight, a buffer and a child: the three kinds of state."""

    def __init__(self):
        super().__init__()
        self.weight = Parameter(np.arange(6, dtype=np.float32).reshape(2, 3))
        self.register_buffer("count", Tensor(np.zeros(2, dtype=np.int64)))
        self.register_buffer("stat", Tensor(np.ones(2, dtype=np.float32)))
        self.child = Leaf()

    def forward(self, x):
        return self.child(x @ self.weight.T)


class Leaf(Module):
    def __init__(self):
        super().__init__()
        self.scale = Parameter(np.full(2, 2.0, dtype=np.float32))
        self.bias = None

    def forward(self, x):
        return x * self.scale


class Net(Module):
    def __init__(self):
        super().__init__()
        self.first = Block()
        self.second = Block()
        self.head = Parameter(np.ones(2, dtype=np.float32))

    def forward(self, x):
        return self.second(self.first(x) @ np.eye(2, 3, dtype=np.float32)) * self.head


def test_parameter_is_a_tensor_that_requires_grad():
    p = Parameter(np.zeros(3, dtype=np.float32))
    assert isinstance(p, Tensor) and p.requires_grad and p.is_leaf
    assert "Parameter containing" in repr(p)


def test_names_in_registration_order_with_dots():
    net = Net()
    assert [n for n, _ in net.named_parameters()] == [
        "head", "first.weight", "first.child.scale", "second.weight", "second.child.scale"]
    assert [n for n, _ in net.named_buffers()] == [
        "first.count", "first.stat", "second.count", "second.stat"]
    assert [n for n, _ in net.named_children()] == ["first", "second"]
    assert [n for n, _ in net.named_modules()] == [
        "", "first", "first.child", "second", "second.child"]
    assert list(net.state_dict()) == [
        "head", "first.weight", "first.count", "first.stat", "first.child.scale",
        "second.weight", "second.count", "second.stat", "second.child.scale"]
    assert net.first.child.bias is None
    assert len(list(net.parameters(recurse=False))) == 1


def test_reassigning_changes_the_kind_of_an_attribute():
    block = Block()
    block.weight = None                       # a parameter slot set to None: no longer listed
    assert "weight" not in dict(block.named_parameters())
    block.weight = 3                          # a plain attribute now
    assert block.weight == 3 and "weight" not in dict(block.named_parameters())
    block.child = Parameter(np.zeros(1, dtype=np.float32))   # a module slot becomes a parameter
    assert [n for n, _ in block.named_children()] == []
    assert "child" in dict(block.named_parameters())
    del block.child
    assert not hasattr(block, "child")
    with pytest.raises(TypeError, match="buffer 'stat'"):
        block.stat = np.zeros(2)


def test_shared_parameter_is_listed_once():
    net = Sequential(Leaf(), Leaf())
    net[1].scale = net[0].scale
    assert len(list(net.parameters())) == 1
    assert list(net.state_dict()) == ["0.scale"]


def test_setattr_before_super_init_is_a_clear_error():
    class Forgot(Module):
        def __init__(self):
            self.w = 1

    with pytest.raises(AttributeError, match=r"super\(\)\.__init__\(\)"):
        Forgot()


def test_train_and_eval_are_recursive():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_zero_grad_forgets_every_gradient():
    net = Net()
    x = tinygnet.tensor(np.ones((4, 3), dtype=np.float32))
    net(x).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_to_float64_keeps_parameter_identity_and_int_buffers():
    net = Net()
    params = list(net.parameters())
    net(tinygnet.tensor(np.ones((1, 3), dtype=np.float32))).sum().backward()
    assert net.to(dtype=np.float64) is net
    assert [id(p) for p in net.parameters()] == [id(p) for p in params]
    assert all(p.dtype == np.float64 and p.grad.dtype == np.float64 for p in params)
    assert net.first.stat.dtype == np.float64
    assert net.first.count.dtype == np.int64
    np.testing.assert_array_equal(net.first.weight.numpy(), np.arange(6).reshape(2, 3))
    net.float()
    assert all(p.dtype == np.float32 for p in params)
    with pytest.raises(TypeError, match="floating-point"):
        net.to(dtype=np.int32)
    with pytest.raises(ValueError, match="unknown device"):
        net.to("tpu")


def test_state_dict_holds_host_copies():
    net = Net()
    sd = net.state_dict()
    assert isinstance(sd, OrderedDict)
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    sd["first.weight"][...] = -1
    assert net.first.weight.numpy()[0, 0] == 0
    assert sd["first.count"].dtype == np.int64


def test_load_state_dict_round_trip_keeps_dtype_and_identity():
    source, target = Net(), Net().to(dtype=np.float64)
    for i, p in enumerate(source.parameters()):
        p.data[...] = i + 0.5
    weight = target.first.weight
    result = target.load_state_dict(source.state_dict())
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert target.first.weight is weight and weight.dtype == np.float64
    for (name, a), b in zip(source.state_dict().items(), target.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)
    # Tensors are accepted as values as well as arrays.
    target.load_state_dict({k: tinygnet.tensor(v) for k, v in source.state_dict().items()})


def test_load_state_dict_errors_name_keys_and_both_shapes():
    net = Net()
    sd = net.state_dict()
    missing = OrderedDict(sd)
    del missing["second.child.scale"]
    with pytest.raises(ValueError, match=r"missing keys: second\.child\.scale"):
        net.load_state_dict(missing)
    extra = OrderedDict(sd, **{"first.nonsense": np.zeros(1)})
    with pytest.raises(ValueError, match=r"unexpected keys: first\.nonsense"):
        net.load_state_dict(extra)
    wrong = OrderedDict(sd)
    wrong["first.weight"] = np.zeros((3, 2), dtype=np.float32)
    with pytest.raises(ValueError, match=r"first\.weight.*\(3, 2\).*\(2, 3\)"):
        net.load_state_dict(wrong)
    # Non-strict loading reports the key mismatch but still refuses a wrong shape.
    result = net.load_state_dict(extra, strict=False)
    assert result.unexpected_keys == ["first.nonsense"]
    result = net.load_state_dict(missing, strict=False)
    assert result.missing_keys == ["second.child.scale"]
    with pytest.raises(ValueError, match="wrong shape"):
        net.load_state_dict(wrong, strict=False)


def test_load_state_dict_of_something_else_says_what_it_expected():
    for wrong in (None, [np.zeros(3)], "weights.npz"):
        with pytest.raises(TypeError, match=r"load_state_dict into Net: expected a dict of "
                                            r"name -> array .* got " + type(wrong).__name__):
            Net().load_state_dict(wrong)


def test_a_mismatch_everywhere_gives_a_short_message():
    """Every shape wrong (a checkpoint of another width): the first few, and how many more."""
    small = tinygnet.models.GoogLeNet(num_classes=10, config="cifar", width=0.0625)
    large = tinygnet.models.GoogLeNet(num_classes=10, config="cifar", width=0.125)
    with pytest.raises(ValueError) as caught:
        small.load_state_dict(large.state_dict())
    message = str(caught.value)
    wrong = sum(a.shape != b.shape for a, b in zip(small.state_dict().values(),
                                                  large.state_dict().values()))
    assert message.startswith("load_state_dict into GoogLeNet: wrong shape for conv1.weight: "
                              "the state dict has (8, 3, 3, 3), the module has (4, 3, 3, 3)")
    assert message.endswith(f"and {wrong - 3} more") and len(message) < 400


def test_a_failed_load_changes_nothing():
    net = Net()
    before = net.state_dict()
    bad = OrderedDict((k, np.full_like(v, 7)) for k, v in before.items())
    bad["second.weight"] = np.zeros((5,), dtype=np.float32)
    with pytest.raises(ValueError):
        net.load_state_dict(bad)
    for (name, a), b in zip(before.items(), net.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_repr_is_nested_like_pytorch():
    net = Sequential(nn.Linear(3, 4), nn.ReLU(), Sequential(nn.Dropout(0.5)))
    assert repr(net) == (
        "Sequential(\n"
        "  (0): Linear(in_features=3, out_features=4, bias=True)\n"
        "  (1): ReLU()\n"
        "  (2): Sequential(\n"
        "    (0): Dropout(p=0.5)\n"
        "  )\n"
        ")")


def test_sequential_runs_in_order_and_indexes():
    net = Sequential(OrderedDict(a=Leaf(), b=Leaf()))
    assert len(net) == 2 and net[1] is net.b and list(net) == [net.a, net.b]
    y = net(tinygnet.tensor(np.ones(2, dtype=np.float32)))
    np.testing.assert_array_equal(y.numpy(), [4.0, 4.0])


def test_forward_hook_sees_output_and_can_be_removed():
    leaf, seen = Leaf(), []
    handle = leaf.register_forward_hook(lambda m, inputs, y: seen.append((m, y.shape)))
    leaf(tinygnet.tensor(np.ones(2, dtype=np.float32)))
    assert seen == [(leaf, (2,))]
    handle.remove()
    leaf(tinygnet.tensor(np.ones(2, dtype=np.float32)))
    assert len(seen) == 1


def test_forward_must_be_defined():
    with pytest.raises(NotImplementedError, match="Module does not define forward"):
        Module()(1)
