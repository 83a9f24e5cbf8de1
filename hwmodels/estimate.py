"""Cost a plain ``torch.nn.Module`` on an accelerator by tracing one forward pass.

``estimate(module, (C, H, W), acc)`` runs one forward pass of a random input of
shape (batch, C, H, W) under ``torch.no_grad`` with forward hooks, turns every
executed layer into ``hwmodels.layers`` descriptors and returns the exact
``NetworkCost`` of them, in execution order:

* ``nn.Conv2d``  -> ``ConvLayer`` (map size and batch from the hooked input,
  stride/padding/dilation/groups from the module); ``nn.Conv1d`` -> a ``ConvLayer``
  on a 1 x L map;
* ``nn.Linear``  -> ``LinearLayer`` (batch = product of the input's leading dims);
* pooling, normalisation, activations, dropout, flatten, identity and
  containers cost no array cycles;
* any other module that holds parameters raises a ``ValueError`` naming it;
  teach the estimator with ``register_layer_handler(ModuleType, fn)`` where
  ``fn(module, inputs, output, batch) -> list[Layer]``.  A handler registered
  for a module with children also claims its whole subtree.

Only module calls are costed.  A GEMM or convolution written inline in a
``forward`` outside every costed module (``x @ w``, ``F.linear``, ``F.conv2d``,
attention's ``q @ k.transpose(-2, -1)``, a ``torch.cdist`` distance matrix) raises a
``ValueError`` naming the op, the module whose ``forward`` ran it and its MACs, rather
than leaving its compute out;
a handler registered for that module type costs it.  A TorchScript submodule
(``torch.jit.script``/``trace``) runs where no hook sees it: it costs nothing when its
graph holds no GEMM or convolution and is refused otherwise.  A subclass of a handled
type with a ``forward`` of its own (weight standardisation, a LoRA ``Linear``) is
costed by the base's handler when its forward runs one GEMM per call, and refused
when it runs more.  A module called k times
yields k layers named ``path``, ``path#2``, ...
"""
from __future__ import annotations

import dataclasses
import inspect
import math
import os
import re
import traceback
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Sequence, Tuple

from .accelerator import Accelerator
from .exact import NetworkCost, network_cost
from .layers import ConvLayer, Layer, LinearLayer, _whole

if TYPE_CHECKING:   # torch is imported on first use, so ``import hwmodels`` stays light
    from torch import nn

Handler = Callable[["nn.Module", tuple, object, int], List[Layer]]

_HANDLERS: Dict[type, Handler] = {}
_BUILTINS_DONE = False


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is torch running out of memory (CPU allocator or CUDA): the sizes asked for,
    not a bug."""
    return type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc)


class _HandlerFailed(Exception):
    """Carries a RuntimeError raised by a layer handler past the forward's input-error handling."""


class _LayerInvalid(ValueError):
    """A layer that a module's settings make invalid, already named: not the forward's own error."""


def _raised_at(exc: BaseException) -> str:
    """' (raised at /path/nets.py:22 in helper)': the innermost frame of ``exc`` outside torch and
    hwmodels, the line of the user's network that failed (outside installed libraries, einops say,
    where there is one); '' when there is none."""
    import sysconfig

    import torch
    skip = (os.path.dirname(torch.__file__) + os.sep, os.path.dirname(os.path.abspath(__file__)) + os.sep)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not os.path.abspath(f.filename).startswith(skip)]
    libraries = tuple(os.path.abspath(sysconfig.get_path(key)) + os.sep for key in ("purelib", "platlib", "stdlib"))
    own = [f for f in frames if not os.path.abspath(f.filename).startswith(libraries)]
    frame = (own or frames or [None])[-1]
    return f" (raised at {frame.filename}:{frame.lineno} in {frame.name})" if frame else ""


def register_layer_handler(module_type: type, fn: Handler) -> None:
    """Cost modules of ``module_type`` (and subclasses) with ``fn``.

    ``fn(module, inputs, output, batch)`` gets the module, its input tuple (the
    positional arguments; for a call with keywords only, such as
    ``linear(input=x)``, the keyword values in call order), its output and the estimate's batch, and returns a list of
    ``ConvLayer``/``LinearLayer``/``GemmLayer`` (empty: no array cycles).  Set
    each layer's ``name`` to anything; it is replaced by the module path
    (``path`` for one layer, ``path.0``, ``path.1`` ... for several).
    """
    from torch import nn
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise ValueError(f"register_layer_handler: {module_type!r} is not an nn.Module subclass")
    if not callable(fn):
        raise ValueError(f"register_layer_handler: handler for {module_type.__name__} is not callable")
    _HANDLERS[module_type] = fn


def _conv2d(module: "nn.Conv2d", inputs: tuple, output, batch: int) -> List[Layer]:
    return _conv(module, inputs[0], output, module.kernel_size, module.stride, module.padding, module.dilation)


def _conv1d(module: "nn.Conv1d", inputs: tuple, output, batch: int) -> List[Layer]:
    """A length-L sequence as a 1 x L map (kernel 1 x k): the same GEMM as im2col of the 1-D conv."""
    pad = module.padding if isinstance(module.padding, str) else (0, module.padding[0])
    return _conv(module, inputs[0].unsqueeze(-2), output.unsqueeze(-2), (1, module.kernel_size[0]),
                 (1, module.stride[0]), pad, (1, module.dilation[0]))


def _conv(module, x, output, kernel_size, stride, padding, dil) -> List[Layer]:
    b, (h, w) = (x.shape[0] if x.dim() == 4 else 1), x.shape[-2:]
    kh, kw = kernel_size
    extra = (0, 0)
    if isinstance(padding, str):   # 'valid' or 'same' (torch pads the extra cell right/bottom)
        if padding == "valid":
            pad = (0, 0)
        else:
            total = (dil[0] * (kh - 1), dil[1] * (kw - 1))
            pad, extra = (total[0] // 2, total[1] // 2), (total[0] % 2, total[1] % 2)
    else:
        pad = padding
    layer = ConvLayer("", in_h=int(h), in_w=int(w), in_channels=module.in_channels,
                      out_channels=module.out_channels, kernel_h=kh, kernel_w=kw,
                      stride=stride, padding=pad, dilation=dil,
                      groups=module.groups, batch=int(b), extra_padding=extra)
    if tuple(output.shape[-2:]) != (layer.out_h, layer.out_w):
        raise ValueError(f"{type(module).__name__}: traced output {tuple(output.shape)} does not match "
                         f"the lowered {layer.out_h}x{layer.out_w} map")
    return [layer]


def _linear(module: "nn.Linear", inputs: tuple, output, batch: int) -> List[Layer]:
    x = inputs[0]
    rows = math.prod(int(d) for d in x.shape[:-1]) if x.dim() > 1 else 1
    return [LinearLayer("", module.in_features, module.out_features, batch=rows)]


def _free(module: "nn.Module", inputs: tuple, output, batch: int) -> List[Layer]:
    """Vector-unit work (normalisation, activation, pooling, reshapes): no array cycles."""
    return []


def _register_builtins() -> None:
    """Handlers for torch's own layers; a user's handler for the same type wins."""
    global _BUILTINS_DONE
    if _BUILTINS_DONE:
        return
    from torch import nn
    builtins: Dict[type, Handler] = {nn.Conv2d: _conv2d, nn.Conv1d: _conv1d, nn.Linear: _linear}
    # Normalisation layers hold (affine) parameters but no GEMM; PReLU holds its slope; an
    # embedding is a table lookup.
    # (RMSNorm is torch >= 2.4; getattr keeps torch 2.1 working)
    for free_type in (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm,
                      getattr(nn, "RMSNorm", nn.LayerNorm), nn.PReLU, nn.Identity, nn.Flatten, nn.Unflatten,
                      nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Upsample, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d,
                      nn.ReplicationPad2d, nn.ChannelShuffle, nn.PixelShuffle, nn.Embedding, nn.EmbeddingBag):
        builtins[free_type] = _free
    for module_type, fn in builtins.items():
        _HANDLERS.setdefault(module_type, fn)
    _BUILTINS_DONE = True


# torch functions (by __name__) that run multiply-accumulates on the array: seen outside every
# costed module, their compute would silently be missing from the estimate
_GEMM_FUNCTIONS = {"linear", "bilinear", "matmul", "__matmul__", "__rmatmul__", "linalg_matmul", "mm", "bmm",
                   "mv", "inner", "dot", "vdot", "linalg_vecdot", "cdist", "chain_matmul", "linalg_multi_dot",
                   "addmm", "addbmm", "baddbmm", "addmv",
                   "addmm_", "addbmm_", "baddbmm_", "addmv_", "einsum", "tensordot", "conv1d", "conv2d",
                   "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                   "scaled_dot_product_attention", "multi_head_attention_forward"}
# and the aten names a TorchScript graph gives some of them (torch.jit.trace records conv2d so)
_SCRIPTED_GEMMS = _GEMM_FUNCTIONS | {"_convolution", "convolution", "_convolution_mode"}


def _scripted_gemm_ops(sub: "nn.Module") -> List[str]:
    """The GEMM-like aten ops anywhere in a ScriptModule's inlined graph (branches and loops
    included): TorchScript runs outside Python, so neither hooks nor the inline check see them."""
    return sorted(set(re.findall(r"aten::(\w+)", str(sub.inlined_graph))) & _SCRIPTED_GEMMS)


def _einsum_summed(args: tuple):
    """The product of the summed letters' sizes of an einsum call (MACs per output element), None
    when nothing is multiplied and summed (a transpose, an outer product, a one-operand sum or
    trace), 0 when not worked out (an equation that is not a string)."""
    import torch
    equation = args[0] if args and isinstance(args[0], str) else None
    operands = args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if equation is None:
        return 0
    equation = equation.replace(" ", "")
    if "->" in equation:
        inputs, output = equation.split("->")
    else:   # implicit output: the letters that appear once (torch keeps the ellipsis dims too)
        inputs = equation
        letters = inputs.replace(",", "").replace(".", "")
        output = "".join(letter for letter in set(letters) if letters.count(letter) == 1)
    summed = set(inputs.replace(",", "").replace(".", "")) - set(output)
    if not summed or "," not in inputs:   # one operand: a sum or a trace, nothing multiplied
        return None
    sizes = {}
    for spec, operand in zip(inputs.split(","), operands):
        if not isinstance(operand, torch.Tensor):
            continue
        head, _, tail = spec.partition("...")   # an ellipsis stands for the dims between head and tail
        shape = tuple(int(d) for d in operand.shape)
        if len(head) + len(tail) <= len(shape) and ("..." in spec or len(spec) == len(shape)):
            sizes.update(zip(head, shape[:len(head)]))
            sizes.update(zip(tail, shape[len(shape) - len(tail):]))
    return math.prod(sizes.get(letter, 0) for letter in summed)


def _inline_macs(name: str, args: tuple, kwargs: dict, out) -> Optional[int]:
    """Multiply-accumulates of one GEMM/convolution call from its shapes (0 where not worked out);
    None for a call that accumulates nothing (an einsum that sums no index)."""
    import torch
    if name == "einsum":
        summed = _einsum_summed(args)
        return None if summed is None else (out.numel() * summed if isinstance(out, torch.Tensor) else 0)
    if not isinstance(out, torch.Tensor):
        return 0
    first = args[0] if args else kwargs.get("input")
    weight = args[1] if len(args) > 1 else kwargs.get("weight")
    if name == "linear" and isinstance(weight, torch.Tensor):
        return out.numel() * int(weight.shape[-1])
    if name == "inner" and any(isinstance(t, torch.Tensor) and t.dim() == 0 for t in (first, weight)):
        return None   # inner with a scalar is a scaling: nothing summed
    if name in ("matmul", "__matmul__", "linalg_matmul", "mm", "bmm", "mv", "inner", "dot", "vdot", "cdist") \
            and isinstance(first, torch.Tensor) and first.dim() > 0:
        return out.numel() * int(first.shape[-1])     # every output element sums over the inner dim
    if name == "linalg_vecdot":
        first = args[0] if args else kwargs.get("x")
        second = args[1] if len(args) > 1 else kwargs.get("y")
        if isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor):
            dim = kwargs.get("dim", args[2] if len(args) > 2 else -1)
            return out.numel() * int(torch.broadcast_shapes(first.shape, second.shape)[dim])
    if name == "scaled_dot_product_attention" and len(args) >= 3 and isinstance(args[1], torch.Tensor):
        # scores (..., L, S) over E, then (..., L, Ev) over S
        query, key = args[0], args[1]
        return (query.numel() // int(query.shape[-1])) * int(key.shape[-2]) * int(query.shape[-1]) + \
            out.numel() * int(key.shape[-2])
    if name in ("conv1d", "conv2d", "conv3d") and isinstance(weight, torch.Tensor):
        return out.numel() * math.prod(int(d) for d in weight.shape[1:])
    return 0


def _watch_inline_gemms(found: List[Tuple[str, str, int]], inside_costed: List[int], running: List[str]):
    """A TorchFunctionMode that records (function, module path, MACs) for every GEMM-like torch
    function called while no costed module runs (``inside_costed[0] == 0``); ``running`` is the
    stack of module paths whose forward is running."""
    from torch.overrides import TorchFunctionMode

    class InlineGemms(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            name = getattr(func, "__name__", "")
            if inside_costed[0] == 0 and name in _GEMM_FUNCTIONS:
                macs = _inline_macs(name, args, kwargs, out)
                if macs is not None:
                    found.append((name, running[-1] if running else "", macs))
            return out
    return InlineGemms()


def _inline_gemm_error(module: "nn.Module", found: List[Tuple[str, str, int]], own_forward=()) -> ValueError:
    path = found[0][1]
    sub = module.get_submodule(path) if path else module
    ops = sorted({name for name, p, _ in found if p == path})
    macs = sum(m for _, p, m in found if p == path)
    others = len({p for _, p, _ in found}) - 1
    return ValueError(
        f"{_module_name(path, sub)} computes {', '.join(ops)} inline in its forward"
        + (f" ({macs:,} MACs)" if macs else "") + (f", as do {others} other module(s)" if others > 0 else "")
        + (", more than the one call per module call that its base class's handler costs" if path in own_forward
           else ", outside every costed layer")
        + f", so the estimate would leave it out; cost it with {_handler_hint(sub)}")


def _module_name(path: str, sub: "nn.Module") -> str:
    return f"module '{path or '<root>'}' ({type(sub).__module__}.{type(sub).__qualname__})"


def _handler_hint(sub: "nn.Module") -> str:
    """How to teach the estimator ``sub``'s type (both refusals end with it)."""
    return (f"hwmodels.estimate.register_layer_handler({type(sub).__name__}, fn), fn(module, inputs, output, "
            f"batch) -> list of ConvLayer/LinearLayer/GemmLayer (its layers replace the costing of all its "
            f"submodules)")


def _handler_for(module: "nn.Module"):
    """(the handler of the nearest class in ``module``'s MRO that has one, whether ``module``'s class
    overrides that class's forward), or (None, False)."""
    for cls in type(module).__mro__:
        if cls in _HANDLERS:
            return _HANDLERS[cls], type(module).forward is not cls.forward
    return None, False


def _rename(layers: Sequence[Layer], path: str) -> List[Layer]:
    if len(layers) == 1:
        return [dataclasses.replace(layers[0], name=path)]
    return [dataclasses.replace(layer, name=f"{path}.{i}") for i, layer in enumerate(layers)]


def too_large_to_trace(input_shape: Sequence[int], batch: int) -> bool:
    """Whether ``batch`` inputs of ``input_shape`` hold 2**62 elements or more: torch cannot even
    describe such a tensor, so ``trace_layers`` refuses it."""
    return int(batch) * math.prod(int(d) for d in input_shape) >= 2 ** 62


def trace_layers(module: "nn.Module", input_shape: Sequence[int], batch: int = 1) -> List[Layer]:
    """Layers (in execution order) of one forward pass of a (batch, *input_shape) input.

    Runs in eval mode (no running-stat updates, dropout off) and restores every
    submodule's train/eval flag afterwards.  The input goes to the device of the
    module's first parameter: a module built under ``torch.device("meta")`` is
    traced from shapes alone, without arithmetic.  A module that feeds its input to an
    ``nn.Embedding`` gets token indices (int64) of ``input_shape``, e.g. (50,) tokens.
    """
    import torch
    _register_builtins()
    batch = _whole(batch, "batch")   # 2.5 was traced as 2
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    hint = "expected the per-sample shape without the batch, such as (3, 32, 32)"
    if isinstance(input_shape, torch.Tensor):
        raise ValueError(f"input_shape is a tensor of shape {tuple(input_shape.shape)}; {hint}")
    try:
        shape = tuple(_whole(d, "each dimension") for d in input_shape)   # (3, 8.7, 8) was an 8x8 map
    except TypeError:   # not a sequence
        raise ValueError(f"input_shape {input_shape!r}: {hint}") from None
    except ValueError as exc:
        raise ValueError(f"input_shape {input_shape!r}: {exc}; {hint}") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"input shape must be positive dimensions, got {tuple(input_shape)}")
    if too_large_to_trace(shape, batch):
        raise ValueError(f"an input of batch {batch} x {'x'.join(map(str, shape))} is too large to trace")
    try:   # the estimator feeds forward one tensor
        inspect.signature(module.forward).bind(None)
    except TypeError as exc:
        raise ValueError(f"{type(module).__name__}.forward must take one input tensor to be traced "
                         f"({exc})") from None
    except ValueError:   # no signature to inspect: let the call say
        pass
    handled: Dict[str, Tuple["nn.Module", Handler]] = {}
    own_forward: set = set()   # handled modules whose class has its own forward: watched inline
    claimed: List[str] = []
    unknown: Dict[str, "nn.Module"] = {}
    for path, sub in module.named_modules():
        if any(prefix == "" or path.startswith(prefix + ".") for prefix in claimed):
            continue
        if isinstance(sub, torch.jit.ScriptModule):   # takes no hooks: free unless its graph has GEMMs
            gemms = _scripted_gemm_ops(sub)
            if gemms:
                raise ValueError(f"{_module_name(path, sub)} is TorchScript (torch.jit.script/trace) and runs "
                                 f"{', '.join(gemms)}, which the estimator cannot see in it; pass the eager "
                                 f"module instead")
            claimed.append(path)
            continue
        fn, overridden = _handler_for(sub)
        if fn is not None:
            handled[path] = (sub, fn)
            if overridden:   # e.g. a LoRA Linear: its forward may do more than the handler costs
                own_forward.add(path)
            claimed.append(path)
            continue
        if any(True for _ in sub.parameters(recurse=False)):
            unknown[path] = sub          # an error only if forward actually calls it

    traced: List[Layer] = []
    calls: Dict[str, int] = {}

    def make_hook(path: str, fn: Handler):
        def hook(mod, args, kwargs, output):
            inputs = args if args else tuple(kwargs.values())
            calls[path] = calls.get(path, 0) + 1
            name = path or type(mod).__name__
            if calls[path] > 1:
                name = f"{name}#{calls[path]}"
            try:
                traced.extend(_rename(list(fn(mod, inputs, output, batch)), name))
            except RuntimeError as exc:   # a handler's bug, not the input's: keep it apart below
                raise _HandlerFailed() from exc
            except ValueError as exc:     # a layer the module's settings make invalid: name the module
                detail = str(exc).removeprefix("layer '': ")   # its name is set only after the handler
                raise _LayerInvalid(f"{_module_name(path, mod)}: {detail}") from None
        return hook

    modes = {name: sub.training for name, sub in module.named_modules()}
    called_unknown: List[str] = []
    inline: List[Tuple[str, str, int]] = []
    inside_costed, running = [0], []

    def hides_inline(path):   # a costed module whose forward is its handler's: inline GEMMs not watched
        return path in handled and path not in own_forward

    def enter(path, costed):
        running.append(path)
        inside_costed[0] += costed

    def leave(costed):
        running.pop()
        inside_costed[0] -= costed

    # the stack of running modules (paths) and how deep inside costed ones: entered before any other
    # pre-hook (spectral_norm's power iteration belongs to its module), left even when forward raises
    # (a caught failure must not leave the count up); ScriptModules take no hooks
    watched = [(path, sub) for path, sub in module.named_modules() if not isinstance(sub, torch.jit.ScriptModule)]
    hooks = []
    try:
        for path, sub in watched:
            hooks.append(sub.register_forward_pre_hook(lambda mod, inputs, path=path: enter(path, hides_inline(path)),
                                                       prepend=True))
        for path, (sub, fn) in handled.items():
            hooks.append(sub.register_forward_hook(make_hook(path, fn), with_kwargs=True))
        for path, sub in watched:
            hooks.append(sub.register_forward_hook(lambda mod, inputs, output, path=path: leave(hides_inline(path)),
                                                   always_call=True))
        for path, sub in unknown.items():
            hooks.append(sub.register_forward_pre_hook(lambda mod, inputs, path=path: called_unknown.append(path)))
        lookups = []   # (embedding, its input) as called: one fed the network's own input takes token indices
        for sub in module.modules():
            if isinstance(sub, (torch.nn.Embedding, torch.nn.EmbeddingBag)):
                hooks.append(sub.register_forward_pre_hook(
                    lambda mod, inputs: lookups.append((mod, inputs[0] if inputs else None))))
        first = next(iter(module.parameters()), None)
        dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
        device = first.device if first is not None else torch.device("cpu")

        def network_input(tokens: int = 0):
            """Floats in [0.5, 1.5), or with ``tokens`` int64 indices below it; on a meta device, shapes only."""
            if device.type == "meta":   # a batch of any size costs no memory
                return torch.empty((batch,) + shape, device=device, dtype=torch.long if tokens else dtype)
            gen = torch.Generator().manual_seed(0)
            if tokens:
                return torch.randint(0, tokens, (batch,) + shape, generator=gen).to(device)
            return (torch.rand((batch,) + shape, generator=gen) + 0.5).to(device=device, dtype=dtype)

        x = network_input()
        module.eval()
        with torch.no_grad(), _watch_inline_gemms(inline, inside_costed, running):
            try:
                try:
                    module(x)
                except RuntimeError:
                    fed = next((mod for mod, arg in lookups if arg is x), None)
                    if fed is None:
                        raise
                    # a token network (a text CNN): its input is indices into that embedding; traced again
                    # (an embedding elsewhere, learned positions beside a patch conv, takes the floats)
                    for found in (traced, calls, inline, called_unknown):
                        found.clear()
                    x = network_input(fed.num_embeddings)
                    module(x)
            except _HandlerFailed as failed:
                raise failed.__cause__ from None
            except (TypeError, OverflowError) as exc:
                if "overflow" not in str(exc).lower():   # a bug in the module: its traceback stays
                    raise
                # sizes whose product torch's int64 shape arithmetic cannot hold (a cat of huge maps)
                raise ValueError(f"{type(module).__name__} on input {tuple(x.shape)} makes a tensor too "
                                 f"large to describe (its size overflows 64-bit integers)") from None
            except _LayerInvalid:
                raise
            except (RuntimeError, ValueError) as exc:
                if is_out_of_memory(exc):
                    raise
                # a shape the network cannot take (e.g. 1 channel into a 3-channel stem), or a bug
                # in it: the line that raised, as the chained traceback is not printed by the CLI
                raise ValueError(f"{type(module).__name__} does not run on input {tuple(x.shape)} "
                                 f"(batch x {'x'.join(map(str, shape))}): "
                                 f"{(str(exc).splitlines() or [type(exc).__name__])[0]}{_raised_at(exc)}") from exc
    finally:
        for h in hooks:
            h.remove()
        for name, sub in module.named_modules():
            sub.training = modes.get(name, sub.training)
    if called_unknown:
        path = called_unknown[0]
        sub = unknown[path]
        raise ValueError(f"don't know the hardware layers of {_module_name(path, sub)}, which holds "
                         f"parameters; call {_handler_hint(sub)}")
    # a handled module with its own forward: its handler costs one GEMM per call, the rest is inline
    for path in own_forward:
        ran = [entry for entry in inline if entry[1] == path]
        if len(ran) <= calls.get(path, 0):
            inline = [entry for entry in inline if entry[1] != path]
    if inline:
        raise _inline_gemm_error(module, inline, own_forward)
    return traced


def estimate(module: "nn.Module", input_shape: Sequence[int], accelerator: "Accelerator | str | os.PathLike",
             batch: int = 1, mode: str = "systolic") -> NetworkCost:
    """Exact cost of ``module`` on ``accelerator`` for ``batch`` inputs of ``input_shape``.

    input_shape: per-sample shape without batch, e.g. (3, 32, 32).
    accelerator: an ``Accelerator``, or a preset name or YAML path for ``load_accelerator``.
    mode: 'systolic' (fold timing, several arrays, memory bound) or 'uboost'.
    """
    return network_cost(trace_layers(module, input_shape, batch), accelerator, mode)   # which loads a name


# ``hwmodels.estimate`` is this function once the package is imported (it shadows
# the module name), so make ``hwmodels.estimate.register_layer_handler`` work too.
estimate.register_layer_handler = register_layer_handler
estimate.trace_layers = trace_layers
