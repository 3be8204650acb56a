"""The torch runtime's lean forward: the model traced once into one flat function of torch calls.

A batch-1 forward of a small network in eager torch pays a fixed Python cost per module call (`nn.Module.__call__`,
its hooks check, the container's loop): about 1.6 us each, 18 calls for the MNIST CNN, half of a pruned model's
call (benchmarks/compress_prune.md). `lean_forward(model, example)` removes it without changing one kernel:

1. trace: `torch.fx` symbolic tracing, through every container and custom module, down to torch.nn's leaf layers.
   The tracer knows the example's tensors, so a branch on a tensor's rank, dtype or device (`x.ndim == 3`) takes
   the example's answer (these do not change between calls: the runtime checks the inputs' rank and dtype on each
   call and runs the module when they differ). A branch on a shape or on data (`if x.shape[0]`, `int(t.max())`:
   the text encoders' host-side trimming) cannot be traced: the model runs as a module, the reason recorded.
2. rewrite: each plain leaf layer becomes the torch function its `forward` calls, with its weights as plain
   tensors (Conv, Linear, activations, pooling, Flatten, LayerNorm, Embedding, BatchNorm on running statistics);
   Dropout and Identity vanish (eval mode); a BatchNorm right after a Conv or Linear is folded into its weights.
   Any other leaf (LSTM, MultiheadAttention...) stays a module call inside the graph.
3. check: the graph and the module run the example's first rows (batch 1 and batch 2-4); any output that differs by
   more than `ATOL` (scaled by the output's magnitude) and changes a row's argmax rejects the graph.

The result shares the model's weight tensors (no copy): in-place updates of the weights reach it; `stale()` says
when a captured parameter or layer was replaced (a pruned model), and the runtime traces again. Python side effects
of `forward` (a layer keeping its attention map) are not replayed: code that needs them calls the module.
Training, checkpoints and `dlforge export` never see this graph: it is built from the loaded module, for inference.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

ATOL = 1e-5  # per unit of output magnitude; folding a BatchNorm moves float32 logits by ~1e-7
PARITY_ROWS = 4
# Tensor facts that are the same on every call of a runtime (its inputs come from the same fitted features): a
# branch on them is traced as the example takes it, and `LeanForward.accepts` checks them on each call.
_FIXED_ATTRIBUTES = ("ndim", "dtype", "device", "is_cuda", "layout", "is_sparse", "is_quantized")
_FIXED_METHODS = ("dim", "is_floating_point", "is_complex", "get_device")


class LeanTraceError(Exception):
    """The model cannot be traced into a lean graph (the runtime runs the module and says why)."""


# ------------------------------------------------------------------------------------------------ tracing
class _Proxy(fx.Proxy):
    """An fx Proxy that knows its value on the example, so rank/dtype/device questions get plain answers."""

    def __getattr__(self, name: str):
        if name in _FIXED_ATTRIBUTES:
            return getattr(self.tracer.value_of(self), name)
        if name in _FIXED_METHODS:
            value = self.tracer.value_of(self)
            return lambda *args, **kwargs: getattr(value, name)(*args, **kwargs)
        return super().__getattr__(name)

    def __bool__(self):
        raise LeanTraceError(f"a branch on a traced value ({self.node.format_node() or self.node.name}) depends on "
                             "a shape or on the data")

    def __len__(self):
        raise LeanTraceError("len() of a traced tensor depends on its shape")


@contextlib.contextmanager
def _unpatched_modules():
    """nn.Module's own __call__ and __getattr__ while a leaf layer runs on the example's tensors (tracing patches
    them to record module calls and parameter reads, which a leaf's own forward must not add to the graph)."""
    from torch.fx import _symbolic_trace

    patched = torch.nn.Module.__call__, torch.nn.Module.__getattr__
    torch.nn.Module.__call__ = _symbolic_trace._orig_module_call
    torch.nn.Module.__getattr__ = _symbolic_trace._orig_module_getattr
    try:
        yield
    finally:
        torch.nn.Module.__call__, torch.nn.Module.__getattr__ = patched


class _ExampleTracer(fx.Tracer):
    """fx tracing that also runs every traced op on the example (values kept per node)."""

    def __init__(self, examples: list):
        super().__init__()
        self.examples = list(examples)
        self.values: dict[fx.Node, Any] = {}

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _Proxy(node, self)

    def value_of(self, proxy: fx.Proxy):
        if proxy.node not in self.values and proxy.node.op != "get_attr":
            raise LeanTraceError(f"no example value for {proxy.node.name}")
        return self._value(proxy.node)

    def _value(self, node: fx.Node):
        if node not in self.values and node.op == "get_attr":  # a tensor constant fx stored on the root itself
            self.values[node] = getattr(self.root, node.target)
        return self.values[node]

    def _concrete(self, arg):
        return fx.node.map_aggregate(arg, lambda a: self._value(a) if isinstance(a, fx.Node) else a)

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        if kind == "placeholder":
            if not self.examples:
                raise LeanTraceError("forward takes more inputs than the example gives")
            self.values[node] = self.examples.pop(0)
        elif kind == "get_attr":
            value = self.root
            with _unpatched_modules():  # tracing's Module.__getattr__ would record the read again
                for part in target.split("."):
                    value = getattr(value, part)
            self.values[node] = value
        elif kind in ("call_function", "call_method", "call_module"):
            args, kwargs = self._concrete(node.args), self._concrete(node.kwargs)
            if kind == "call_function":
                self.values[node] = target(*args, **kwargs)
            elif kind == "call_method":
                self.values[node] = getattr(args[0], target)(*args[1:], **kwargs)
            else:
                with _unpatched_modules():
                    self.values[node] = self.root.get_submodule(target)(*args, **kwargs)
        return proxy

    def to_bool(self, obj):
        raise LeanTraceError("a branch depends on a shape or on the data")

    def iter(self, obj):
        raise LeanTraceError("iterating over a traced tensor depends on its shape")


# ------------------------------------------------------------------------------------------------ rewriting
def _conv(module: nn.Module, weight, bias) -> tuple[Callable, tuple]:
    fn = {nn.Conv1d: torch.conv1d, nn.Conv2d: torch.conv2d, nn.Conv3d: torch.conv3d}[type(module)]
    return fn, (weight, bias, module.stride, module.padding, module.dilation, module.groups)


def _leaf_call(module: nn.Module) -> tuple[Callable, tuple, dict] | None | str:
    """(function, extra positional args after the input, its tensors by name) for a leaf layer at inference,
    "identity" for one that returns its input, None for one to keep as a module."""
    kind = type(module)
    if kind in (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout):
        return "identity"
    if kind in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and module.padding_mode == "zeros":
        return (*_conv(module, module.weight, module.bias), {})
    if kind is nn.Linear:
        return F.linear, (module.weight, module.bias), {}
    if kind is nn.ReLU:
        return (torch.relu_ if module.inplace else torch.relu), (), {}
    simple = {nn.Tanh: torch.tanh, nn.Sigmoid: torch.sigmoid}
    if kind in simple:
        return simple[kind], (), {}
    if kind is nn.GELU:
        return F.gelu, (), {"approximate": module.approximate}
    if kind in (nn.SiLU, nn.ReLU6, nn.Hardswish, nn.Hardsigmoid):
        fn = {nn.SiLU: F.silu, nn.ReLU6: F.relu6, nn.Hardswish: F.hardswish, nn.Hardsigmoid: F.hardsigmoid}[kind]
        return fn, (), {"inplace": module.inplace}
    if kind in (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d):
        return F.pad, (module.padding, "constant", module.value), {}
    if kind is nn.LeakyReLU:
        return F.leaky_relu, (module.negative_slope, module.inplace), {}
    if kind is nn.Flatten:
        return torch.flatten, (module.start_dim, module.end_dim), {}
    if kind in (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d) and not module.return_indices:
        fn = {nn.MaxPool1d: torch.max_pool1d, nn.MaxPool2d: torch.max_pool2d, nn.MaxPool3d: torch.max_pool3d}[kind]
        return fn, (module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode), {}
    if kind is nn.AvgPool2d:
        return F.avg_pool2d, (module.kernel_size, module.stride, module.padding, module.ceil_mode,
                              module.count_include_pad, module.divisor_override), {}
    if kind is nn.AvgPool1d:
        return F.avg_pool1d, (module.kernel_size, module.stride, module.padding, module.ceil_mode,
                              module.count_include_pad), {}
    if kind is nn.AdaptiveAvgPool2d:
        size = module.output_size
        if size is None or (isinstance(size, tuple) and None in size):
            return None
        return torch._C._nn.adaptive_avg_pool2d, (size,), {}
    if kind is nn.AdaptiveAvgPool1d:
        return torch.adaptive_avg_pool1d, (module.output_size,), {}
    if kind is nn.LayerNorm:
        return F.layer_norm, (module.normalized_shape, module.weight, module.bias, module.eps), {}
    if kind is nn.Embedding and module.max_norm is None:
        return F.embedding, (module.weight, module.padding_idx), {}
    if kind in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) and _on_running_stats(module):
        return F.batch_norm, (module.running_mean, module.running_var, module.weight, module.bias, False, 0.0,
                              module.eps), {}
    if kind is nn.Softmax:
        return torch.softmax, (module.dim,), {}
    return None


def _on_running_stats(bn: nn.Module) -> bool:
    return bn.track_running_stats and bn.running_mean is not None and not bn.training


def _folded(producer: nn.Module, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of `producer` (Conv or Linear) followed by `bn` on its running statistics, as one layer."""
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight
        shift = -bn.running_mean * scale
        if bn.bias is not None:
            shift = shift + bn.bias
        weight = producer.weight * scale.reshape(-1, *([1] * (producer.weight.ndim - 1)))
        bias = shift if producer.bias is None else producer.bias * scale + shift
    return weight.contiguous(), bias.contiguous()


@dataclass
class _Captured:
    """What the graph read from the model, to tell when the model changed under it (`stale`)."""

    entries: list = field(default_factory=list)  # (owner's dict, key, object)
    versions: list = field(default_factory=list)  # (tensor, _version, data_ptr) of those folded into a constant

    def add(self, owner: nn.Module, key: str, obj, *, baked: bool = False) -> None:
        for store in (owner._parameters, owner._buffers, owner._modules, owner.__dict__):
            if store.get(key) is obj:
                self.entries.append((store, key, obj))
                break
        else:
            raise LeanTraceError(f"{type(owner).__name__}.{key} is not where the graph read it")
        if baked and isinstance(obj, torch.Tensor):
            self.versions.append((obj, obj._version, obj.data_ptr()))

    def stale(self) -> bool:
        return (any(store.get(key) is not obj for store, key, obj in self.entries)
                or any(t._version != v or t.data_ptr() != ptr for t, v, ptr in self.versions))


def _rewrite(graph: fx.Graph, root: nn.Module) -> tuple[dict[str, Any], _Captured, dict]:
    """Leaf module calls → torch functions (in place on `graph`); returns the graph's attributes by name (plain
    tensors and the modules kept), what was captured from `root`, and counts for the description."""
    attributes: dict[str, Any] = {}
    captured = _Captured()
    counts = {"functions": 0, "modules_kept": [], "dropped": 0, "batch_norms_folded": 0}
    names: dict[int, str] = {}

    def owner_of(target: str) -> tuple[nn.Module, str]:
        path, _, last = target.rpartition(".")
        return (root.get_submodule(path) if path else root), last

    def constant(tensor: torch.Tensor | None, *, baked: bool = False, owner=None, key=None):
        """A get_attr node reading `tensor` as a plain attribute (no nn.Module lookup on each call)."""
        if tensor is None:
            return None
        if owner is not None:
            captured.add(owner, key, tensor, baked=baked)
        name = names.get(id(tensor))
        if name is None:
            name = names[id(tensor)] = f"t{len(names)}"
            attributes[name] = tensor  # the Parameter itself: a `.data` swap (model.double()) reaches the graph
        return graph.get_attr(name)

    for node in list(graph.nodes):
        if node.op == "get_attr":
            owner, key = owner_of(node.target)
            value = getattr(owner, key)
            if not isinstance(value, torch.Tensor):
                raise LeanTraceError(f"the graph reads {node.target}, a {type(value).__name__}")
            if owner is root and key.startswith("_tensor_constant"):  # a constant of forward's code, put there by fx
                delattr(root, key)
                owner = key = None
            with graph.inserting_before(node):
                node.replace_all_uses_with(constant(value, owner=owner, key=key))
            graph.erase_node(node)
            continue
        if node.op == "call_function" and node.target in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
                                                          F.alpha_dropout) and not _dropout_trains(node):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            counts["dropped"] += 1
            continue
        if node.op != "call_module":
            continue
        module = root.get_submodule(node.target)
        owner, key = owner_of(node.target)
        captured.add(owner, key, module)
        if len(node.args) != 1 or node.kwargs:
            call = None
        else:
            call = _leaf_call(module)
        if call == "identity":
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            counts["dropped"] += 1
            continue
        if call is None:
            name = f"m{len(counts['modules_kept'])}"
            attributes[name] = module
            node.target = name
            counts["modules_kept"].append(type(module).__name__)
            continue
        fn, extra, kwargs = call
        producer = node.args[0]
        fold = (type(module) in (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d) and _on_running_stats(module)
                and isinstance(producer, fx.Node) and producer.op == "call_function"
                and producer.meta.get("lean_layer") is not None and len(producer.users) == 1)
        if fold:
            layer, _ = producer.meta["lean_layer"]
            weight, bias = _folded(layer, module)
            for tensor_name in ("running_mean", "running_var", "weight", "bias"):
                if getattr(module, tensor_name) is not None:
                    captured.add(module, tensor_name, getattr(module, tensor_name), baked=True)
            for tensor_name in ("weight", "bias"):
                if getattr(layer, tensor_name) is not None:
                    captured.add(layer, tensor_name, getattr(layer, tensor_name), baked=True)
            with graph.inserting_before(producer):
                args = list(producer.args)
                args[1], args[2] = constant(weight), constant(bias)
            producer.args = tuple(args)
            node.replace_all_uses_with(producer)
            graph.erase_node(node)
            counts["batch_norms_folded"] += 1
            continue
        with graph.inserting_before(node):
            args = [constant(a, owner=module, key=_tensor_key(module, a)) if isinstance(a, torch.Tensor) else a
                    for a in extra]
            new = graph.call_function(fn, (node.args[0], *args), kwargs)
        if type(module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear):
            new.meta["lean_layer"] = (module, owner)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        counts["functions"] += 1
    for node in graph.nodes:
        node.meta.pop("lean_layer", None)
    return attributes, captured, counts


def _tensor_key(module: nn.Module, tensor: torch.Tensor) -> str:
    for key, value in (*module._parameters.items(), *module._buffers.items()):
        if value is tensor:
            return key
    raise LeanTraceError(f"{type(module).__name__} reads a tensor it does not own")


def _dropout_trains(node: fx.Node) -> bool:
    training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
    return training is not False


# ------------------------------------------------------------------------------------------------ the result
@dataclass
class LeanForward:
    """The traced function (`forward(inputs)`, same inputs and outputs as the model) and how it was made."""

    forward: Callable
    inputs: dict[str, tuple[int, torch.dtype]]  # name -> (rank, dtype) the graph was traced for
    captured: _Captured
    description: dict

    def accepts(self, x: dict[str, torch.Tensor]) -> bool:
        """The inputs have the rank and dtype the graph was traced for (its branches on them hold)."""
        for name, (rank, dtype) in self.inputs.items():
            value = x.get(name)
            if value is None or value.dim() != rank or value.dtype != dtype:
                return False
        return True

    def stale(self) -> bool:
        """A weight or layer the graph read was replaced in the model, or a folded one changed in place."""
        return self.captured.stale()


def _rows(x: dict[str, torch.Tensor], n: int) -> dict[str, torch.Tensor]:
    """The example's first rows, repeated when it has fewer than `n`."""
    have = len(next(iter(x.values())))
    index = torch.arange(n) % have
    return {k: v[index] for k, v in x.items()}


def _differs(reference: dict, got: dict) -> str | None:
    if not isinstance(got, dict) or set(got) != set(reference):
        return f"outputs {sorted(got) if isinstance(got, dict) else type(got).__name__} != {sorted(reference)}"
    for name, ref in reference.items():
        value = got[name]
        if not isinstance(value, torch.Tensor) or value.shape != ref.shape or value.dtype != ref.dtype:
            return f"output '{name}' has shape {getattr(value, 'shape', None)}, the module's {tuple(ref.shape)}"
        if not ref.is_floating_point():
            if not torch.equal(ref, value):
                return f"output '{name}' differs"
            continue
        diff = float((value.float() - ref.float()).abs().max()) if ref.numel() else 0.0
        scale = max(1.0, float(ref.float().abs().max())) if ref.numel() else 1.0
        same_argmax = ref.ndim >= 2 and ref.shape[-1] > 1 and torch.equal(ref.argmax(-1), value.argmax(-1))
        if not diff <= ATOL * scale and not (diff <= 1e-3 * scale and same_argmax):
            return f"output '{name}' differs from the module's by {diff:.3g}"
    return None


def lean_forward(model: nn.Module, example: dict[str, torch.Tensor]) -> LeanForward:
    """The lean graph of `model` (in eval mode) for inputs like `example` (a dict of tensors by input name, >= 1
    row), checked against the module on the example's first rows; LeanTraceError says why there is none."""
    if model.training:
        raise LeanTraceError("the model is in training mode")
    if not example or not all(isinstance(v, torch.Tensor) and v.ndim >= 1 and len(v) for v in example.values()):
        raise LeanTraceError("no example rows to trace and check with")
    started = time.perf_counter()
    small = _rows(example, min(PARITY_ROWS, max(2, len(next(iter(example.values()))))))
    tracer = _ExampleTracer([small])
    try:
        with torch.no_grad():
            graph = tracer.trace(model)
    except LeanTraceError:
        raise
    except Exception as exc:  # fx raises many kinds (TypeError for int(proxy), TraceError, NotImplementedError...)
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise LeanTraceError(f"torch.fx cannot trace it ({exc.__class__.__name__}: {first})") from None
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise LeanTraceError(f"forward takes {len(placeholders)} inputs; the runtime passes one dict")
    attributes, captured, counts = _rewrite(graph, model)
    lean = fx.GraphModule(attributes, graph, class_name="LeanGraph")
    lean.graph.eliminate_dead_code()  # the weights a folded BatchNorm replaced (needs the owning module)
    lean.graph.lint()
    lean.recompile()
    for name, value in attributes.items():
        if isinstance(value, nn.Parameter):  # a plain attribute, read without nn.Module.__getattr__ on each call
            lean._parameters.pop(name, None)
            lean._buffers.pop(name, None)
            lean.__dict__[name] = value
    forward = lean.forward  # the generated function itself: no nn.Module.__call__ per call
    with torch.no_grad():
        for rows in (1, len(next(iter(small.values())))):
            batch = _rows(small, rows)
            try:
                got = forward(batch)
            except Exception as exc:
                raise LeanTraceError(f"the traced graph fails on {rows} row(s) ({exc.__class__.__name__}: "
                                     f"{str(exc)[:160]})") from None
            problem = _differs(model(batch), got)
            if problem:
                raise LeanTraceError(f"parity check on {rows} row(s): {problem}")
    calls = sum(1 for n in lean.graph.nodes if n.op in ("call_function", "call_method", "call_module"))
    description = {"ops": calls, "layers_as_functions": counts["functions"],
                   "batch_norms_folded": counts["batch_norms_folded"], "identities_dropped": counts["dropped"],
                   "modules_kept": sorted(set(counts["modules_kept"])),
                   "build_ms": round(1000 * (time.perf_counter() - started), 1)}
    inputs = {name: (value.dim(), value.dtype) for name, value in example.items()}
    return LeanForward(forward, inputs, captured, description)


__all__ = ["ATOL", "LeanForward", "LeanTraceError", "lean_forward"]
