"""What one forward pass tells about a model's layers, for ``target_layer="auto"`` and the advice of its refusals.

``trace_forward`` records every module's output shape in completion order and which attention modules work on
tokens. From it, ``guess_token_layer`` finds the layer a Grad-CAM of a vision transformer uses (the first norm of
the last attention block) and the layout of its tokens (``TokenGrid``: prefix
tokens and patch grid), checked on the input at hand, for any transformer: the refusals of ``"auto"`` and of a layer
whose output is not a feature map suggest it with names that exist in *this* model.
"""

from __future__ import annotations

from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from cam_callbacks.capture.layouts import ChannelsLast, TokenGrid, patch_grid

#: Prefix tokens (class, distillation, register tokens) a layout guessed from shapes may have.
MAX_PREFIX_TOKENS = 16
_FIXED_SIZE_POOLS = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def is_attention(module: nn.Module) -> bool:
    """An attention module: torch's MultiheadAttention, or one with an int ``num_heads``/``num_attention_heads``."""
    if isinstance(module, nn.MultiheadAttention):
        return True
    return any(isinstance(getattr(module, a, None), int) for a in ("num_heads", "num_attention_heads"))


def named_modules(model: nn.Module) -> Dict[str, nn.Module]:
    """``{dotted name: module}`` of every submodule (the model itself left out)."""
    return {name: module for name, module in model.named_modules() if name}


def _first_tensor(output: Any) -> Optional[Tensor]:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


class Trace(NamedTuple):
    """One forward pass, module by module in completion order."""

    #: ``(name, output shape)`` of every module with a tensor output (adaptive pools left out: their size is fixed)
    outputs: List[Tuple[str, Tuple[int, ...]]]
    #: every module that ran -> its position in completion order
    completed: Dict[str, int]
    #: attention modules whose output (or its first element) holds several tokens, in completion order
    token_attention: List[str]


def trace_forward(model: nn.Module, example: Tensor) -> Trace:
    """Run ``model`` on ``example`` (no gradients) with a hook on every module; the caller restores modes."""
    modules = named_modules(model)
    names = {id(m): n for n, m in modules.items()}
    trace = Trace([], {}, [])

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        name = names[id(module)]
        trace.completed[name] = len(trace.completed)
        if isinstance(output, Tensor) and not isinstance(module, _FIXED_SIZE_POOLS):
            trace.outputs.append((name, tuple(output.shape)))
        first = _first_tensor(output)
        # more than one token (or position) per image: (N, T, C), (T, N, C), windows (N * w, T, C), (N, H, W, C);
        # an attention pooling head gives one per image
        if is_attention(module) and first is not None and first.dim() >= 3 and first.numel() // max(first.shape[-1], 1) > example.shape[0]:
            trace.token_attention.append(name)

    handles = [m.register_forward_hook(hook) for m in modules.values()]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return trace


def inside_attention(model: nn.Module, name: str) -> bool:
    """Whether ``name`` is an attention module or lies inside one."""
    parts = name.split(".")
    return any(is_attention(model.get_submodule(".".join(parts[:i]))) for i in range(1, len(parts) + 1))


def grid_for(tokens: int, example: Tensor) -> Optional[Tuple[int, int]]:
    """``(h, w)`` with ``h * w == tokens`` and the aspect ratio of ``example``'s images (None when there is none)."""
    return patch_grid(tokens, (int(example.shape[-2]), int(example.shape[-1])))


def token_layout(tokens: int, example: Tensor, patch_grid: Optional[Tuple[int, int]] = None) -> Optional[TokenGrid]:
    """The layout of ``tokens`` tokens: prefix tokens before the patch grid of ``patch_grid`` (``(h, w)`` of the patch
    embedding) when that fits, else the fewest prefix tokens that leave a grid with the images' aspect ratio."""
    if patch_grid is not None and 0 <= tokens - patch_grid[0] * patch_grid[1] <= MAX_PREFIX_TOKENS:
        return TokenGrid(prefix_tokens=tokens - patch_grid[0] * patch_grid[1], height=patch_grid[0], width=patch_grid[1])
    for prefix in range(0, min(MAX_PREFIX_TOKENS, tokens - 1) + 1):
        grid = grid_for(tokens - prefix, example)
        if grid is not None:
            return TokenGrid(prefix_tokens=prefix, height=grid[0], width=grid[1])
    return None


def _block_of(model: nn.Module, name: str) -> Optional[str]:
    """The block holding module ``name``: its nearest ancestor (or itself) that is an item of a ModuleList/Sequential."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        parent = model.get_submodule(".".join(parts[: end - 1])) if end > 1 else model
        if isinstance(parent, (nn.ModuleList, nn.Sequential)):
            return ".".join(parts[:end])
    return None


def _patch_grid(model: nn.Module, trace: Trace, example: Tensor) -> Optional[Tuple[int, ...]]:
    """``(h, w)`` of the last ``(N, C, h, w)`` output before the first attention on tokens (the patch embedding)."""
    first = trace.completed[trace.token_attention[0]]
    before = [
        shape[2:]
        for name, shape in trace.outputs
        if trace.completed[name] < first and len(shape) == 4 and shape[0] == example.shape[0] and not inside_attention(model, name)
    ]
    return before[-1] if before else None


class TokenLayer(NamedTuple):
    """A layer whose output is a transformer block's tokens, with their layout."""

    name: str
    layout: TokenGrid
    #: where it is, in words ("the first norm of the last attention block 'layers.1'")
    where: str


def guess_token_layer(model: nn.Module, trace: Trace, example: Tensor) -> Optional[TokenLayer]:
    """The first norm of the last attention block (or the first module there with ``(1, tokens, C)`` output) and its
    layout, found from shapes alone; None when the model has no such block or the tokens fit no grid."""
    if not trace.token_attention:
        return None
    block = _block_of(model, trace.token_attention[-1])
    if block is None:
        return None
    shapes = dict(trace.outputs)
    inside = [
        name
        for name in sorted(trace.completed, key=trace.completed.__getitem__)
        if name.startswith(block + ".")
        and not inside_attention(model, name)
        and len(shapes.get(name, ())) == 3
        and shapes[name][0] == example.shape[0]
        and shapes[name][1] > 1
    ]
    norms = [name for name in inside if isinstance(model.get_submodule(name), nn.LayerNorm)]
    if not norms and not inside:
        return None
    name = (norms or inside)[0]
    patch = _patch_grid(model, trace, example)
    layout = token_layout(shapes[name][1], example, (int(patch[0]), int(patch[1])) if patch is not None else None)
    if layout is None:
        return None
    what = "the first norm" if norms else "the first token output"
    return TokenLayer(name, layout, f"{what} of the last attention block {block!r}, tokens {describe_layout(layout)}")


def describe_layout(layout: Optional[TokenGrid]) -> str:
    """A layout in words: ``"1 prefix token + a 4x4 patch grid"``."""
    if layout is None:
        return "an (N, C, H, W) feature map"
    if isinstance(layout, ChannelsLast):
        return "a channels-last (N, H, W, C) map"
    grid = f"a {layout.height}x{layout.width} patch grid" if layout.height is not None and layout.width is not None else "a square patch grid"
    count = layout.prefix_tokens
    return f"{count} prefix token{'' if count == 1 else 's'} + {grid}"


def layout_argument(layout: Optional[TokenGrid]) -> str:
    """``reshape=`` as a user writes it for ``layout`` (``""`` for None); the grid size only when it is not square."""
    if layout is None:
        return ""
    if isinstance(layout, ChannelsLast):
        return "reshape='nhwc'"
    if layout.height is not None and layout.width is not None and layout.height != layout.width:
        return f"reshape=TokenGrid(prefix_tokens={layout.prefix_tokens}, height={layout.height}, width={layout.width})"
    return f"reshape=TokenGrid(prefix_tokens={layout.prefix_tokens})"


def suggestion(name: str, layout: Optional[TokenGrid]) -> str:
    """``target_layer='...'`` and its ``reshape=``, as a user passes them."""
    argument = layout_argument(layout)
    return f"target_layer={name!r}" + (f", {argument}" if argument else "")
