"""A stand-in accelerator for CPU-only machines: real CPU arithmetic, a non-CPU device's rules.

``--set device=cuda`` must be clean: no tensor made on the host inside a training step and then
mixed with device tensors (a GPU stops with "Expected all tensors to be on the same device"),
no host round trip (``.item()``, ``.cpu()``, ``.numpy()``, ``.tolist()``) in the hot path, graphs
moved once, batches copied from pinned memory. None of this can be seen by running on a CPU,
where every tensor lives on the host; and torch's fake tensors cannot carry a training step here
(fake CUDA tensors abort in autograd on a CPU-only build, and fake sparse products are not
supported on any non-CPU device).

:class:`StandInDevice` makes such a device out of the CPU. While it is active, a tensor "on the
device" is a :class:`StandInTensor`: a wrapper around a real CPU tensor whose ``.device`` is
:data:`STANDIN` (torch's ``lazy`` device type, which a CPU build knows well enough for autograd and
which prismrec never special-cases), so code that asks ``x.device`` and creates tensors there
behaves as it would on a GPU. Every operation is unwrapped, run on the CPU and rewrapped, with
the checks a GPU would make or a GPU user would want:

- **device mismatch**: an operation mixing stand-in tensors with host tensors that are not 0-dim
  scalars raises :class:`DeviceMismatch` (a GPU raises too); so does a random draw for one
  device with a generator of the other;
- **host transfers**: a device-to-host copy (``.cpu()``, ``.to("cpu")``), a read of a device value
  (``.item()``, ``float(x)``, ``bool(x)``, ``.tolist()``) and a host-to-device copy are recorded in
  :attr:`StandInDevice.events` with the phase they happened in (:meth:`StandInDevice.phase`);
  ``.numpy()`` of a device tensor raises, as on a GPU;
- **data-dependent shapes**: operations whose output size depends on the values (``nonzero``,
  ``unique``, boolean indexing, ``bincount`` ...) wait for the device on a GPU; they are recorded
  too (kind ``"shape"``);
- **pinned memory**: ``pin_memory()`` works (a CPU-only build has no pinned memory) and a
  host-to-device copy records whether its source was pinned and the copy ``non_blocking``.

``device="cuda"`` (and ``cuda:N``) also means the stand-in while it is active, so code that moves
batches to ``torch.device("cuda")`` can be run as is. Only what the stand-in can see is checked:
speed, kernels and memory are the real GPU's business (``benchmarks/``).
"""

from __future__ import annotations

import contextlib
import threading
import traceback
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

STANDIN = torch.device("lazy", 0)
"""The device the stand-in tensors report."""

aten = torch.ops.aten


class DeviceMismatch(RuntimeError):
    """An operation mixed device and host tensors (a GPU raises at the same place)."""


class StandInTensor(torch.Tensor):
    """A CPU tensor (``elem``) that reports the stand-in device; only usable inside
    :class:`StandInDevice`."""

    elem: torch.Tensor

    @staticmethod
    def __new__(cls, elem: torch.Tensor):
        options = dict(dtype=elem.dtype, layout=elem.layout, device=STANDIN, requires_grad=False)
        if elem.layout == torch.strided:
            options.update(strides=elem.stride(), storage_offset=elem.storage_offset())
        wrapper = torch.Tensor._make_wrapper_subclass(cls, elem.shape, **options)
        wrapper.elem = elem
        return wrapper

    __torch_function__ = torch._C._disabled_torch_function_impl

    def __repr__(self) -> str:
        return f"StandInTensor({self.elem!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise RuntimeError(f"{func} on a stand-in device tensor outside StandInDevice")


class StandInGenerator(torch.Generator):
    """What ``torch.Generator(device=...)`` makes while the stand-in is active: a CPU generator
    that reports the stand-in device when it was asked for one."""

    def __new__(cls, device=None):
        generator = super().__new__(cls, device="cpu")
        generator.on_device = _is_device(device)
        return generator

    device = property(lambda self: STANDIN if self.on_device else torch.device("cpu"))


def _is_device(device) -> bool:
    """Whether ``device`` (a str or torch.device; None or an index: no) names the stand-in."""
    if device is None or isinstance(device, int):
        return False
    return torch.device(device).type in ("lazy", "cuda")


def _cuda_as_standin(value):
    """``cuda`` (a str or torch.device) as the stand-in; anything else unchanged."""
    if isinstance(value, (str, torch.device)):
        try:
            if torch.device(value).type == "cuda":
                return STANDIN
        except RuntimeError:  # a str that is no device (e.g. a memory format name)
            pass
    return value


def _unwrap(t):
    if not isinstance(t, StandInTensor):
        return t
    # A lazily conjugated (or negated) view keeps its bit on the CPU tensor, where the kernels
    # called from here would ignore it (the wrapper has no such bit): resolved to its values.
    # (A write into such a view would be lost; prismrec writes into none.)
    return t.elem.resolve_conj().resolve_neg() if t.elem.is_conj() or t.elem.is_neg() else t.elem


def _wrap(t):
    if not isinstance(t, torch.Tensor) or isinstance(t, StandInTensor):
        return t
    if t.layout == torch.sparse_csr:  # a CSR wrapper cannot enter torch's sparse kernels: the same
        t = t.to_sparse_coo()          # matrix as COO (prismrec only multiplies with its graphs)
    return StandInTensor(t)


# Operations whose output size depends on the values: on a GPU each waits for the device.
SHAPE_SYNC = {
    aten.nonzero.default, aten.nonzero_static.default, aten.masked_select.default,
    aten._unique2.default, aten.unique_dim.default, aten.unique_consecutive.default,
    aten.bincount.default, aten.repeat_interleave.Tensor,
}

# Torch functions that build a tensor from host data without passing through the dispatcher's
# Python modes (so the device is mapped here).
HOST_BUILDERS = {torch.tensor, torch.as_tensor, torch.Tensor.new_tensor}

# Random draws that take a ``generator``: the generator must belong to the output's device.
RANDOM = {torch.rand, torch.randn, torch.randint, torch.randperm, torch.normal, torch.bernoulli,
          torch.multinomial, torch.poisson, torch.Tensor.uniform_, torch.Tensor.normal_,
          torch.Tensor.exponential_, torch.Tensor.bernoulli_, torch.Tensor.random_,
          torch.Tensor.geometric_, torch.Tensor.cauchy_, torch.Tensor.log_normal_}


@dataclass
class Event:
    """One thing a GPU user would want to know about: a host transfer or a waiting operation."""

    kind: str
    """``to_host`` (device to host copy), ``read`` (a device value read on the host: item,
    float, bool, tolist), ``to_device`` (host to device copy) or ``shape`` (data-dependent size)."""
    op: str
    """The torch operation."""
    phase: str
    """The phase it happened in (:meth:`StandInDevice.phase`)."""
    shape: tuple = ()
    """Shape of the tensor copied or read."""
    pinned: bool = False
    """``to_device``: the source was in pinned memory."""
    non_blocking: bool = False
    """``to_device``: the copy was asked to be asynchronous."""
    where: str = ""
    """The innermost prismrec source line that caused it."""

    def __str__(self) -> str:
        extra = f" pinned={self.pinned} non_blocking={self.non_blocking}" if self.kind == "to_device" else ""
        return f"[{self.phase}] {self.kind} {self.op} {self.shape}{extra} at {self.where}"


def _caller() -> str:
    """``file:line`` of the innermost frame in the prismrec package (what to fix), else of the
    innermost frame outside torch and this module."""
    stack = traceback.extract_stack()
    for frame in reversed(stack):
        path = frame.filename.replace("\\", "/")
        if "/prismrec/" in path:
            return f"{path[path.rindex('/prismrec/') + 1:]}:{frame.lineno}"
    for frame in reversed(stack):
        path = frame.filename.replace("\\", "/")
        if "/torch/" not in path and not path.endswith("standin_device.py"):
            return f"{path.rsplit('/', 1)[-1]}:{frame.lineno}"
    return "?"


class _Dispatch(TorchDispatchMode):
    def __init__(self, owner: "StandInDevice") -> None:
        super().__init__()
        self.owner = owner

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        owner = self.owner
        flat, _ = tree_flatten((args, kwargs))
        device_in = any(isinstance(t, StandInTensor) for t in flat)
        host_in = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, StandInTensor)
                   and t.dim() > 0]
        target = kwargs.get("device")
        to_device = _is_device(target)

        if func is aten._to_copy.default:
            source = args[0]
            if isinstance(source, StandInTensor) and target is not None and not to_device:
                owner.record("to_host", func, source.shape)
                return func(source.elem, **kwargs)
            if not isinstance(source, StandInTensor) and to_device:
                owner.record("to_device", func, source.shape, pinned=getattr(source, "standin_pinned", False),
                             non_blocking=bool(kwargs.get("non_blocking", False)))
        elif func is aten.copy_.default and isinstance(args[0], StandInTensor) != isinstance(args[1], StandInTensor):
            source = args[1]  # copy_ between the host and the device: a transfer, not a mismatch
            if isinstance(args[0], StandInTensor):
                owner.record("to_device", func, source.shape, pinned=getattr(source, "standin_pinned", False),
                             non_blocking=bool(args[2] if len(args) > 2 else kwargs.get("non_blocking", False)))
            else:
                owner.record("to_host", func, source.shape)
        elif device_in and host_in:
            shapes = ", ".join(str(tuple(t.shape)) for t in host_in)
            raise DeviceMismatch(
                f"{func}: host tensor(s) of shape {shapes} meet device tensors at {_caller()} "
                "(a GPU raises 'Expected all tensors to be on the same device'): create them on the "
                "device of the model's tensors")
        if device_in and func in (aten._local_scalar_dense.default, aten.equal.default):
            owner.record("read", func, args[0].shape)
        if device_in and func in SHAPE_SYNC:
            owner.record("shape", func, args[0].shape)
        if device_in and func is aten.index.Tensor and any(
                isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1] if i is not None):
            owner.record("shape", func, args[0].shape)

        kw = dict(kwargs)
        if to_device:
            kw["device"] = torch.device("cpu")
        out = func(*tree_map(_unwrap, args), **tree_map(_unwrap, kw))
        if not (device_in or to_device):
            return out
        return tree_map(_wrap, out)


class _Functions(TorchFunctionMode):
    def __init__(self, owner: "StandInDevice") -> None:
        super().__init__()
        self.owner = owner

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in HOST_BUILDERS:
            device = kwargs.get("device")
            if device is None and func is torch.Tensor.new_tensor and isinstance(args[0], StandInTensor):
                device = STANDIN
            if _is_device(device):  # host data copied to the device
                built = func(*args, **{**kwargs, "device": "cpu"})
                if func is torch.Tensor.new_tensor:
                    built = torch.tensor(built)
                self.owner.record("to_device", func, built.shape)
                return StandInTensor(built.detach()).requires_grad_(bool(kwargs.get("requires_grad", False)))
        if func in RANDOM and kwargs.get("generator") is not None:
            self._check_generator(func, args, kwargs)
        if func is torch.Tensor.to:  # torch initialises CUDA before dispatching a move there
            args = tuple(_cuda_as_standin(a) for a in args)
            kwargs = {k: _cuda_as_standin(v) if k == "device" else v for k, v in kwargs.items()}
        if func is torch.Tensor.pin_memory:  # no pinned memory in a CPU-only build: a marked copy
            pinned = args[0].clone()
            pinned.standin_pinned = True
            return pinned
        if func is torch.Tensor.is_pinned:
            return bool(getattr(args[0], "standin_pinned", False))
        if func is torch.Tensor.numpy and isinstance(args[0], StandInTensor):
            raise TypeError(f"can't convert a device tensor to numpy at {_caller()} (as on a GPU): "
                            "call .cpu() first, outside the hot path")
        if func is torch.Tensor.tolist and isinstance(args[0], StandInTensor):
            self.owner.record("read", func, args[0].shape)
            return args[0].elem.tolist()
        return func(*args, **kwargs)

    @staticmethod
    def _check_generator(func, args, kwargs) -> None:
        generator = kwargs["generator"]
        on_dev = getattr(generator, "on_device", False)
        if func.__name__.endswith("_") or func in (torch.normal, torch.bernoulli, torch.multinomial, torch.poisson):
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            out_dev = bool(tensors) and isinstance(tensors[0], StandInTensor)
            if func is torch.normal and not tensors:
                out_dev = _is_device(kwargs.get("device"))
        else:
            out_dev = _is_device(kwargs.get("device"))
        if out_dev != on_dev:
            raise DeviceMismatch(
                f"{func.__name__} draws a {'device' if out_dev else 'host'} tensor with a "
                f"{'device' if on_dev else 'host'} generator at {_caller()} (a GPU raises 'Expected a "
                "cuda device type for generator'): create the generator on the tensor's device")


@dataclass
class StandInDevice:
    """Context manager: while active, ``STANDIN`` (and ``cuda``) is a device made of the CPU.

    ``with StandInDevice() as dev: model.to(STANDIN); ...`` — then ``dev.events`` lists what
    happened (see the module docstring); ``dev.phase("step")`` labels the events of a block.
    """

    events: list[Event] = field(default_factory=list)
    current: str = "setup"
    _stack: contextlib.ExitStack | None = None

    def record(self, kind: str, func, shape=(), pinned: bool = False, non_blocking: bool = False) -> None:
        """Note a host transfer or waiting operation of the current phase."""
        name = getattr(func, "__name__", str(func))
        self.events.append(Event(kind, str(name), self.current, tuple(shape), pinned, non_blocking, _caller()))

    @contextlib.contextmanager
    def phase(self, name: str):
        """Label the events recorded inside the block with ``name``."""
        before, self.current = self.current, name
        try:
            yield
        finally:
            self.current = before

    def of(self, phase: str, *kinds: str) -> list[Event]:
        """The events of ``phase`` (of the given kinds, all when none are given)."""
        return [e for e in self.events if e.phase == phase and (not kinds or e.kind in kinds)]

    def __enter__(self) -> "StandInDevice":
        if threading.current_thread() is not threading.main_thread():  # pragma: no cover
            raise RuntimeError("StandInDevice patches torch.Generator: use it from the main thread")
        stack = contextlib.ExitStack()
        stack.enter_context(_Functions(self))
        stack.enter_context(_Dispatch(self))
        original = torch.Generator
        torch.Generator = StandInGenerator  # code creates generators with torch.Generator(device=...)
        stack.callback(setattr, torch, "Generator", original)
        self._stack = stack
        return self

    def __exit__(self, *exc) -> None:
        self._stack.close()
        self._stack = None


def to_host(t):
    """A stand-in tensor's CPU tensor (any other value unchanged); for checks after the fact."""
    return t.elem if isinstance(t, StandInTensor) else t
