"""The torch.fx machinery behind the ``"fx"`` tail of ``cam_callbacks.capture.tail``.

- ``trace_cut`` traces the model with ``torch.fx``, the target layer kept as one node (also a
  container such as ``layer4`` or ``features``), and splits the graph there: the tail is every node
  that depends on the layer's output; values that cross the cut from the head (a skip connection
  from before the target layer) are listed apart.
- ``FxTail.from_cut`` computes those cross-cut values once from the example images (with a graph
  of the head that keeps its in-place writes) and returns the tail as a callable. It calls the
  model's own modules and parameters, gives private copies to the inputs the tail may write into in
  place, and is re-traced when the model's train/eval modes change.
"""

from __future__ import annotations

import inspect
import operator
import weakref
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

import torch
import torch.fx as fx
from torch import Tensor, nn

# --- tracing and cutting ------------------------------------------------------------------------


class _NoCutError(Exception):
    """The traced graph cannot be cut at the target layer."""


class _Tracer(fx.Tracer):
    """The default leaf rule, except that the target layer is a leaf and the modules containing it are traced through."""

    def __init__(self, layer_name: str) -> None:
        super().__init__()
        self.layer_name = layer_name

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name == self.layer_name:
            return True
        if self.layer_name.startswith(module_qualified_name + "."):
            return False
        return super().is_leaf_module(m, module_qualified_name)


_MISSING = object()


def _trace(model: nn.Module, layer_name: str) -> fx.Graph:
    """Trace ``model`` with the target layer as a leaf, undoing what the traced ``forward`` writes on the modules.

    Tracing runs the Python ``forward`` with placeholder values: ``self.last = x`` would leave a torch.fx
    Proxy on the model (which then cannot be pickled) and ``self.calls += 1`` would count once more.
    Every module's attributes are put back as they were, also when tracing fails.
    """
    saved = {module: dict(vars(module)) for module in model.modules()}
    try:
        return _Tracer(layer_name).trace(model)
    finally:
        for module, attributes in saved.items():
            current = vars(module)
            for key in [k for k in current if k not in attributes]:
                del current[key]
            for key, value in attributes.items():
                if current.get(key, _MISSING) is not value:
                    current[key] = value


@dataclass
class FxCut:
    """A traced graph split at the target node (see ``trace_cut``)."""

    graph: fx.Graph
    target: fx.Node
    tail: Dict[fx.Node, None]  # nodes depending on the target's output, in graph order (output node excluded)
    cross: List[fx.Node]  # input-dependent nodes outside the tail that the tail consumes
    constants: Set[fx.Node]  # input-independent nodes the tail consumes (parameters via get_attr, ...), with their inputs


def _cut(graph: fx.Graph, layer_name: str) -> FxCut:
    calls = [n for n in graph.nodes if n.op == "call_module" and n.target == layer_name]
    if not calls:
        raise _NoCutError(f"the traced graph has no call of {layer_name!r} (it runs inside a module that torch.fx keeps as a leaf, or not through its forward)")
    if len(calls) > 1:
        raise _NoCutError(f"{layer_name!r} is called {len(calls)} times in the traced graph")
    target = calls[0]
    tail: Dict[fx.Node, None] = {}
    input_dependent: Set[fx.Node] = set()
    output: Optional[fx.Node] = None
    for node in graph.nodes:
        if node.op == "placeholder" or any(i in input_dependent for i in node.all_input_nodes):
            input_dependent.add(node)
        if node.op == "output":
            output = node
        elif node is not target and any(i is target or i in tail for i in node.all_input_nodes):
            tail[node] = None
    assert output is not None
    if not any(i is target or i in tail for i in output.all_input_nodes):
        raise _NoCutError(f"the model's output does not depend on {layer_name!r}")
    cross: Dict[fx.Node, None] = {}
    constants: Set[fx.Node] = set()
    for node in [*tail, output]:
        for i in node.all_input_nodes:
            if i is target or i in tail:
                continue
            if i in input_dependent:
                cross[i] = None
            else:
                constants |= _ancestors([i])
    return FxCut(graph, target, tail, list(cross), constants)


def trace_cut(model: nn.Module, layer_name: str) -> FxCut:
    """Trace ``model`` with ``torch.fx`` and cut the graph at the module ``layer_name``.

    Raises:
        Exception: What torch.fx raises when it cannot trace the model (data-dependent control flow, ...),
            or an error saying why the graph cannot be cut there (the layer is not called exactly once
            in it, or the output does not depend on it).
    """
    return _cut(_trace(model, layer_name), layer_name)


def _ancestors(nodes: Sequence[fx.Node]) -> Set[fx.Node]:
    """``nodes`` and every node they (transitively) consume."""
    found: Set[fx.Node] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if node not in found:
            found.add(node)
            stack.extend(node.all_input_nodes)
    return found


# --- in-place writes: which inputs must the tail receive as private copies? ---------------------

_IN_PLACE_OPERATORS = {
    operator.setitem,
    operator.iadd,
    operator.isub,
    operator.imul,
    operator.itruediv,
    operator.ifloordiv,
    operator.imod,
    operator.ipow,
    operator.imatmul,
    operator.iand,
    operator.ior,
    operator.ixor,
}
#: Functions that always return a new tensor (never a view of an argument).
_FRESH_FUNCTIONS = {
    operator.add,
    operator.sub,
    operator.mul,
    operator.truediv,
    operator.floordiv,
    operator.matmul,
    operator.neg,
    operator.pow,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
    torch.cat,
    torch.stack,
    torch.matmul,
}
#: Leaf modules that may return their input itself or a view of it.
_ALIASING_MODULES = (nn.Identity, nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def _writes_in_place(node: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    """Whether ``node`` may write into one of its inputs (conservative)."""
    if node.op == "call_module":
        return getattr(modules[str(node.target)], "inplace", False) is True
    if node.op == "call_method":
        name = str(node.target)
        return name in ("__setitem__", "copy_") or (name.endswith("_") and not name.startswith("_"))
    if node.op != "call_function":
        return False
    if node.target in _IN_PLACE_OPERATORS:
        return True
    name = getattr(node.target, "__name__", "")
    if name.endswith("_") and not name.startswith("_"):  # torch.relu_, ...
        return True
    if node.kwargs.get("inplace") is True:
        return True
    try:  # F.relu(x, True) and friends
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return bound.arguments.get("inplace") is True


def _may_be_written(graph: fx.Graph, start: fx.Node, modules: Dict[str, nn.Module]) -> bool:
    """Whether running ``graph`` may write into the tensor ``start`` stands for (or a view of it)."""
    aliases = {start}
    for node in graph.nodes:
        if not any(i in aliases for i in node.all_input_nodes):
            continue
        if _writes_in_place(node, modules):
            return True
        if node.op == "call_module":
            if isinstance(modules[str(node.target)], _ALIASING_MODULES):
                aliases.add(node)
        elif node.target not in _FRESH_FUNCTIONS:  # may be a view (flatten, reshape, getitem, ...)
            aliases.add(node)
    return False


# --- the fx tail ----------------------------------------------------------------------------------


@dataclass
class _Built:
    module: fx.GraphModule
    copy_inputs: Tuple[bool, ...]  # per input (activations, then the cross-cut values): the tail may write into it


def _build_tail(model: nn.Module, cut: FxCut) -> _Built:
    graph = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {cut.target: graph.placeholder("activations")}
    for node in cut.cross:
        env[node] = graph.placeholder(f"cut_{node.name}")
    inputs = list(env.values())
    for node in cut.graph.nodes:
        if node in cut.constants or node in cut.tail or node.op == "output":
            env[node] = graph.node_copy(node, lambda n: env[n])
    graph.lint()
    # GraphModule refers to the model's own submodules and parameters (no copies).
    module = fx.GraphModule(model, graph, class_name=f"{type(model).__name__}Tail")
    modules = dict(module.named_modules())
    return _Built(module, tuple(_may_be_written(graph, node, modules) for node in inputs))


def _build_head(model: nn.Module, cut: FxCut) -> fx.GraphModule:
    """The nodes outside the tail that the cross-cut values need (in-place writes kept), returning those values."""
    modules = dict(model.named_modules())
    outside = [n for n in cut.graph.nodes if n.op != "output" and n is not cut.target and n not in cut.tail]
    effects = [n for n in outside if (n.op == "call_function" and n.is_impure()) or _writes_in_place(n, modules)]
    needed = _ancestors([*cut.cross, *effects]) | {n for n in outside if n.op == "placeholder"}
    graph = fx.Graph()
    env: Dict[fx.Node, fx.Node] = {}
    for node in outside:
        if node in needed:
            env[node] = graph.node_copy(node, lambda n: env[n])
    graph.output(tuple(env[n] for n in cut.cross))
    graph.lint()
    return fx.GraphModule(model, graph, class_name=f"{type(model).__name__}Head")


def _modes(model: nn.Module) -> Tuple[bool, ...]:
    return tuple(m.training for m in model.modules())


class FxTail:
    """The fx tail as a plain callable, re-traced when the model's train/eval modes change.

    Tracing bakes Python-level uses of ``self.training`` into the graph (``F.dropout(x, training=
    self.training)``, torchvision's stochastic depth), so one graph is kept per combination of modes.
    """

    def __init__(self, model: nn.Module, layer_name: str, cut: FxCut, values: Sequence[Any], example_batch: int) -> None:
        # A weak reference: tails are cached per model (weakly keyed), and a strong one would keep every model alive.
        self._model = weakref.ref(model)
        self.layer_name = layer_name
        self.values = tuple(values)
        self.cut_names = tuple(n.name for n in cut.cross)
        self.example_batch = example_batch
        self.batched = tuple(isinstance(v, Tensor) and v.dim() >= 1 and v.shape[0] == example_batch for v in values)
        self._program = cut.graph.python_code("self").src if values else ""
        self._built: Dict[Tuple[bool, ...], _Built] = {_modes(model): _build_tail(model, cut)}

    @classmethod
    def from_cut(cls, model: nn.Module, layer_name: str, cut: FxCut, example: Tensor) -> "FxTail":
        """The tail of ``cut``, with the values crossing the cut computed from ``example`` (detached).

        Run it in the modes the tail will be called in (eval), without autograd.
        """
        values: Tuple[Any, ...] = ()
        if cut.cross:
            values = tuple(v.detach() if isinstance(v, Tensor) else v for v in _build_head(model, cut)(example))
        return cls(model, layer_name, cut, values, example.shape[0])

    @property
    def graph_module(self) -> fx.GraphModule:
        """The tail's ``GraphModule`` for the model's current modes: ``(activations, *cross_cut_values) -> logits``."""
        return self._current().module

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise RuntimeError(f"the model this tail after {self.layer_name!r} was derived from no longer exists")
        return model

    def _current(self) -> _Built:
        modes = _modes(self.model)
        built = self._built.get(modes)
        if built is None:
            built = self._built[modes] = self._retrace()
        return built

    def _retrace(self) -> _Built:
        advice = "Call the tail in the modes it was derived in (eval), or derive a new tail."
        try:
            graph = _trace(self.model, self.layer_name)
            cut = _cut(graph, self.layer_name)
        except Exception as error:
            raise RuntimeError(
                f"the tail after {self.layer_name!r} cannot be traced in the model's current train/eval modes ({type(error).__name__}: {error}). {advice}"
            ) from error
        if self.values and (graph.python_code("self").src != self._program or tuple(n.name for n in cut.cross) != self.cut_names):
            raise RuntimeError(
                f"{type(self.model).__name__} traces to a different program in its current train/eval modes, and the "
                f"tail after {self.layer_name!r} uses values from before the layer that were computed in eval mode. {advice}"
            )
        return _build_tail(self.model, cut)

    def __call__(self, activations: Tensor) -> Tensor:
        built = self._current()
        inputs: List[Any] = [activations, *self.values]
        fresh = [False] * len(inputs)
        if any(self.batched):
            rows = activations.shape[0]
            if rows % self.example_batch:
                raise ValueError(
                    f"activations has {rows} rows, not a multiple of the {self.example_batch} example images: the tail "
                    f"after {self.layer_name!r} reuses values computed from them (rows [i*r:(i+1)*r] belong to image i)"
                )
            repeats = rows // self.example_batch
            if repeats > 1:
                for index, (value, batched) in enumerate(zip(self.values, self.batched), start=1):
                    if batched:
                        inputs[index] = value.repeat_interleave(repeats, dim=0)
                        fresh[index] = True
        for index, copy in enumerate(built.copy_inputs):
            if copy and not fresh[index] and isinstance(inputs[index], Tensor):
                inputs[index] = inputs[index].clone()  # the tail writes into it in place (densenet's F.relu(inplace=True))
        return built.module(*inputs)
