"""Module and Parameter: the objects that own a network's state.

A ``Module`` holds three kinds of state, registered just by assigning an
attribute (as in PyTorch)::

    self.weight = Parameter(...)                     # learned: in parameters()
    self.register_buffer("running_mean", tensor)     # state, not learned: in buffers()
    self.conv = Conv2d(...)                          # a child module: in children()

Names nest with dots: the ``weight`` of the child ``branch1`` of the child
``inception3a`` is ``inception3a.branch1.weight``. These names are the keys of
``state_dict()``, in registration order: a module's own parameters, then its
buffers, then each child's entries.

``train()`` / ``eval()`` set ``.training`` on a module and every module below
it; layers whose behaviour differs (dropout, batch norm, GoogLeNet's auxiliary
heads) read it in ``forward``.
"""
from __future__ import annotations

from collections import OrderedDict, namedtuple
from collections.abc import Mapping

import numpy as np

from .. import backend
from ..tensor import Tensor

__all__ = ["Parameter", "Module", "Sequential", "IncompatibleKeys"]


class Parameter(Tensor):
    """A Tensor a Module learns: ``requires_grad`` is on, and assigning one to
    a module attribute registers it in ``parameters()``."""

    __slots__ = ()

    def __init__(self, data, requires_grad=True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        return "Parameter containing:\n" + super().__repr__()


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


class _HookHandle:
    """Returned by ``register_forward_hook``; ``remove()`` unregisters the hook."""

    def __init__(self, hooks: dict, key: int):
        self._hooks, self._key = hooks, key

    def remove(self):
        self._hooks.pop(self._key, None)


class Module:
    """Base class of layers and networks: subclasses define ``__init__`` and ``forward``."""

    _next_hook_key = 0

    def __init__(self):
        # object.__setattr__: our own __setattr__ needs these dicts to exist.
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} does not define forward()")

    def __call__(self, *args, **kwargs):
        y = self.forward(*args, **kwargs)
        if self._forward_hooks:
            for hook in tuple(self._forward_hooks.values()):
                hook(self, args, y)
        return y

    def register_forward_hook(self, hook) -> _HookHandle:
        """Call ``hook(module, inputs, output)`` after each forward (``summary`` uses this)."""
        key = Module._next_hook_key
        Module._next_hook_key += 1
        self._forward_hooks[key] = hook
        return _HookHandle(self._forward_hooks, key)

    # ------------------------------------------------------ registration
    def __setattr__(self, name, value):
        if "_parameters" not in self.__dict__:
            raise AttributeError(f"{type(self).__name__}: call super().__init__() "
                                 f"before assigning {name!r}")
        if isinstance(value, Parameter):
            self._forget(name)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._forget(name)
            self._modules[name] = value
        elif name in self._buffers:          # assigning to a buffer keeps it a buffer
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} to buffer {name!r} "
                                f"(a Tensor or None is expected)")
            self._buffers[name] = value
        elif value is None and (name in self._parameters or name in self._modules):
            (self._parameters if name in self._parameters else self._modules)[name] = None
        else:
            self._forget(name)
            object.__setattr__(self, name, value)

    def _forget(self, name):
        for table in (self._parameters, self._buffers, self._modules, self.__dict__):
            table.pop(name, None)

    def __getattr__(self, name):
        # Called only when normal lookup fails: look in the three tables.
        for table in ("_parameters", "_buffers", "_modules"):
            entries = self.__dict__.get(table)
            if entries is not None and name in entries:
                return entries[name]
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __delattr__(self, name):
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_buffer(self, name: str, tensor: Tensor | None) -> None:
        """Register state that is saved in ``state_dict`` but not learned (batch-norm statistics)."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer({name!r}): expected a Tensor, "
                            f"got {type(tensor).__name__}")
        if tensor is not None and tensor.requires_grad:
            raise ValueError(f"register_buffer({name!r}): a buffer must not require grad")
        self.__dict__.pop(name, None)
        self._buffers[name] = tensor

    def add_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module({name!r}): expected a Module, got {type(module).__name__}")
        self.__dict__.pop(name, None)
        self._modules[name] = module

    # ---------------------------------------------------------- traversal
    def named_children(self):
        """(name, module) for each direct child, in registration order."""
        for name, module in self._modules.items():
            if module is not None:
                yield name, module

    def children(self):
        for _, module in self.named_children():
            yield module

    def named_modules(self, prefix: str = ""):
        """(dotted name, module) for this module and every module below it, depth first."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{child_name}" if name else child_name, child)
                        for child_name, child in module.named_children()]
            stack.extend(reversed(children))

    def modules(self):
        for _, module in self.named_modules():
            yield module

    def _named_tensors(self, table: str, prefix: str, recurse: bool):
        seen = set()
        modules = self.named_modules(prefix) if recurse else [(prefix, self)]
        for module_name, module in modules:
            for name, value in getattr(module, table).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{module_name}.{name}" if module_name else name), value

    def named_parameters(self, prefix: str = "", recurse: bool = True):
        """(dotted name, Parameter) pairs, each parameter once, in registration order."""
        return self._named_tensors("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True):
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True):
        return self._named_tensors("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True):
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # -------------------------------------------------------------- state
    def train(self, mode: bool = True) -> Module:
        """Set training mode here and in every module below; returns self."""
        for module in self.modules():
            object.__setattr__(module, "training", bool(mode))
        return self

    def eval(self) -> Module:
        return self.train(False)

    def zero_grad(self) -> None:
        """Forget every parameter's gradient (``backward`` accumulates into ``.grad``)."""
        for p in self.parameters():
            p.grad = None

    def to(self, device=None, dtype=None) -> Module:
        """Move parameters and buffers to ``device`` and/or cast them to ``dtype``, in place.

        The Parameter objects stay the same (an optimiser built before
        ``.to()`` still holds them); only their ``.data`` (and ``.grad``)
        change. ``dtype`` applies to floating-point tensors only, so an
        integer buffer such as a step counter keeps its type.
        """
        if device is not None:
            device = backend.parse_device(device)
        if dtype is not None and np.dtype(dtype).kind != "f":
            raise TypeError(f"Module.to(): dtype must be a floating-point type, got {dtype}")
        for t in list(self.parameters()) + list(self.buffers()):
            t.data = _convert(t.data, device, dtype)
            if t.grad is not None:
                t.grad.data = _convert(t.grad.data, device, dtype)
        return self

    def cpu(self) -> Module:
        return self.to("cpu")

    def cuda(self) -> Module:
        return self.to("cuda")

    def double(self) -> Module:
        return self.to(dtype=np.float64)

    def float(self) -> Module:
        return self.to(dtype=np.float32)

    def _state_items(self):
        """(dotted name, Tensor) for parameters and buffers, module by module."""
        seen = set()
        for module_name, module in self.named_modules():
            for table in (module._parameters, module._buffers):
                for name, value in table.items():
                    if value is None or id(value) in seen:
                        continue
                    seen.add(id(value))
                    yield (f"{module_name}.{name}" if module_name else name), value

    def state_dict(self) -> OrderedDict:
        """Name -> NumPy array (a host copy) for every parameter and buffer.

        Layouts are PyTorch's (conv weights OIHW, linear weights (out, in)),
        so the arrays map one to one onto a PyTorch model with the same names.
        """
        return OrderedDict((name, _host_copy(t.data)) for name, t in self._state_items())

    def load_state_dict(self, state_dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays into this module's parameters and buffers (keeping their dtype and device).

        With ``strict=True`` the keys must match exactly. Any shape mismatch
        is an error. Nothing is copied unless every entry checks out.
        Returns ``(missing_keys, unexpected_keys)``.
        """
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"load_state_dict into {type(self).__name__}: expected a dict of "
                            f"name -> array (what state_dict() returns), got "
                            f"{type(state_dict).__name__}")
        own = OrderedDict(self._state_items())
        missing = [name for name in own if name not in state_dict]
        unexpected = [name for name in state_dict if name not in own]
        problems = []
        if strict and missing:
            problems.append(f"missing keys: {_first_few(missing)}")
        if strict and unexpected:
            problems.append(f"unexpected keys: {_first_few(unexpected)}")
        wrong = [f"{name}: the state dict has {tuple(_array_of(state_dict[name]).shape)}, "
                 f"the module has {t.shape}" for name, t in own.items()
                 if name in state_dict and tuple(_array_of(state_dict[name]).shape) != t.shape]
        if wrong:
            problems.append(f"wrong shape for {_first_few(wrong)}")
        if problems:
            raise ValueError(f"load_state_dict into {type(self).__name__}: " + "; ".join(problems))
        for name, t in own.items():
            if name in state_dict:
                value = backend.to_numpy(_array_of(state_dict[name]))
                xp = backend.get_array_module(t.data)
                t.data[...] = xp.asarray(value.astype(t.dtype, copy=False))
        return IncompatibleKeys(missing, unexpected)

    # --------------------------------------------------------------- repr
    def extra_repr(self) -> str:
        """The layer's settings, shown inside its parentheses by ``repr``."""
        return ""

    def __repr__(self):
        lines = [line for line in self.extra_repr().split("\n") if line]
        for name, module in self.named_children():
            child = repr(module).replace("\n", "\n  ")
            lines.append(f"({name}): {child}")
        if not lines:
            return f"{type(self).__name__}()"
        if len(lines) == 1 and not self._modules:
            return f"{type(self).__name__}({lines[0]})"
        return f"{type(self).__name__}(\n  " + "\n  ".join(lines) + "\n)"


def _first_few(items, shown=3) -> str:
    """The first ``shown`` items and how many more: error messages stay one readable line."""
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return "; ".join(items[:shown]) + more


def _array_of(value):
    """The array inside a state-dict value (an array, a Tensor or a nested list)."""
    if isinstance(value, Tensor):
        return value.data
    return value if hasattr(value, "shape") else np.asarray(value)


def _host_copy(array) -> np.ndarray:
    host = backend.to_numpy(array)          # already a copy for a GPU array
    return host.copy() if host is array else host


def _convert(array, device, dtype):
    if dtype is not None and array.dtype.kind == "f":
        array = array.astype(dtype, copy=False)
    if device is not None:
        array = backend.to_device(array, device)
    return array


class Sequential(Module):
    """Modules run one after the other; children are named "0", "1", ...

    ``Sequential(conv, relu)`` or, with names, ``Sequential(OrderedDict(conv=..., relu=...))``.
    """

    def __init__(self, *modules):
        super().__init__()
        if len(modules) == 1 and isinstance(modules[0], OrderedDict):
            for name, module in modules[0].items():
                self.add_module(name, module)
        else:
            for index, module in enumerate(modules):
                self.add_module(str(index), module)

    def forward(self, x):
        for module in self.children():
            x = module(x)
        return x

    def __len__(self):
        return len(self._modules)

    def __getitem__(self, index):
        return list(self._modules.values())[index]

    def __iter__(self):
        return iter(self._modules.values())
