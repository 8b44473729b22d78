"""Token layouts <-> feature maps, so CAM methods run on vision transformers.

A transformer block outputs tokens ``(N, P + h*w, C)``: ``P`` prefix tokens (the class token, maybe
distillation or register tokens) followed by one token per image patch in row-major order. CAM
methods need a feature map ``(N, C, h, w)``. ``TokenGrid`` converts both ways:

- ``TokenGrid.to_grid`` drops the prefix tokens and lays the patch tokens out on the grid;
- ``TokenGrid.to_tokens`` is its inverse, with the prefix tokens given, so a modified grid can
  be fed back into the network (Recipro-CAM, Ablation-CAM and the gradient methods use it).

``reshape="vit"`` everywhere means ``TokenGrid(prefix_tokens=1)`` (torchvision's ``VisionTransformer``,
timm's ViT/DeiT without distillation token). The recommended target layer on torchvision's
``vit_b_16`` is the first LayerNorm of the last encoder block,
``"encoder.layers.encoder_layer_11.ln_1"``: its output is what the last attention reads, so the class
token's gradient reaches every patch token there (the output of the *last* block reaches the
classifier through the class token alone, and its patch tokens get no gradient).

``reshape="nhwc"`` means ``ChannelsLast``: channels-last feature maps ``(N, H, W, C)`` (timm's and
torchvision's Swin stages, ConvNeXt blocks written channels-last) permuted to ``(N, C, H, W)``.
"""

from __future__ import annotations

import math
import weakref
from typing import Optional, Tuple, Union

import torch
from torch import Tensor, nn

_NOT_SQUARE = "; for a grid that is not square give TokenGrid(prefix_tokens=..., height=..., width=...)"


class TokenGrid:
    """Convert transformer tokens ``(N, prefix_tokens + h*w, C)`` to feature maps ``(N, C, h, w)`` and back.

    Args:
        prefix_tokens: Tokens before the patch tokens (1 for a class token).
        height: Patch-grid height; ``None`` for a square grid (``h = w = sqrt(#patch tokens)``).
        width: Patch-grid width; ``None`` for ``#patch tokens / height``.

    Example::

        >>> import torch
        >>> grid = TokenGrid(prefix_tokens=1)
        >>> tokens = torch.arange(2 * 5 * 3.0).reshape(2, 5, 3)  # class token + 2x2 patches, 3 channels
        >>> maps = grid.to_grid(tokens)
        >>> maps.shape
        torch.Size([2, 3, 2, 2])
        >>> torch.equal(grid.to_tokens(maps, tokens[:, :1]), tokens)
        True
    """

    #: Dimensions of the layer output this layout reads (``(N, tokens, C)``).
    output_dims = 3

    def __init__(self, prefix_tokens: int = 1, height: Optional[int] = None, width: Optional[int] = None) -> None:
        for name, value in (("prefix_tokens", prefix_tokens), ("height", height), ("width", width)):
            if value is None and name != "prefix_tokens":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < (0 if name == "prefix_tokens" else 1):
                raise ValueError(f"{name} must be a {'non-negative' if name == 'prefix_tokens' else 'positive'} int, got {value!r}")
        self.prefix_tokens = prefix_tokens
        self.height = height
        self.width = width

    def __repr__(self) -> str:
        return f"TokenGrid(prefix_tokens={self.prefix_tokens}, height={self.height}, width={self.width})"

    def grid_size(self, num_tokens: int) -> Tuple[int, int]:
        """``(h, w)`` of the patch grid for ``num_tokens`` tokens in all (prefix included)."""
        patches = num_tokens - self.prefix_tokens
        if patches < 1:
            raise ValueError(f"{num_tokens} tokens leave no patch token after {self.prefix_tokens} prefix token(s); {grid_advice(num_tokens)}{_NOT_SQUARE}")
        if self.height is None and self.width is None:
            side = math.isqrt(patches)
            if side * side != patches:
                raise ValueError(
                    f"{patches} patch tokens ({num_tokens} tokens - {self.prefix_tokens} prefix) do not form a square grid; "
                    f"{grid_advice(num_tokens)}{_NOT_SQUARE}"
                )
            return side, side
        height = self.height if self.height is not None else patches // int(self.width)  # type: ignore[arg-type]
        width = self.width if self.width is not None else patches // height
        if height * width != patches:
            raise ValueError(
                f"a {height}x{width} grid does not hold the {patches} patch tokens ({num_tokens} tokens - {self.prefix_tokens} prefix): "
                "give height * width = the number of patch tokens"
            )
        return height, width

    def to_grid(self, tokens: Tensor) -> Tensor:
        """``(N, P + h*w, C)`` tokens -> ``(N, C, h, w)`` map of the patch tokens."""
        if tokens.dim() != 3:
            raise ValueError(f"tokens must be (N, tokens, channels), got shape {tuple(tokens.shape)}")
        n, count, channels = tokens.shape
        h, w = self.grid_size(count)
        return tokens[:, self.prefix_tokens :].transpose(1, 2).reshape(n, channels, h, w)

    def to_tokens(self, grid: Tensor, prefix: Tensor) -> Tensor:
        """``(M, C, h, w)`` map and ``(M, P, C)`` prefix tokens -> ``(M, P + h*w, C)`` tokens."""
        if grid.dim() != 4:
            raise ValueError(f"grid must be (M, C, h, w), got shape {tuple(grid.shape)}")
        if prefix.dim() != 3 or prefix.shape[0] != grid.shape[0] or prefix.shape[1] != self.prefix_tokens or prefix.shape[2] != grid.shape[1]:
            raise ValueError(
                f"prefix must be ({grid.shape[0]}, {self.prefix_tokens}, {grid.shape[1]}) for a grid of shape {tuple(grid.shape)}, got {tuple(prefix.shape)}"
            )
        patches = grid.flatten(2).transpose(1, 2)
        return torch.cat([prefix.to(patches.dtype), patches], dim=1)


def patch_grid(patches: int, image_size: Optional[Tuple[int, int]] = None) -> Optional[Tuple[int, int]]:
    """``(h, w)`` with ``h * w == patches``: square, or with the aspect ratio of ``image_size`` ``(H, W)``; None if none."""
    height, width = image_size if image_size is not None else (1, 1)
    for h in range(1, math.isqrt(patches * max(height, 1)) + 2):
        if patches % h == 0 and h * width == (patches // h) * height:
            return h, patches // h
    return None


def grid_advice(num_tokens: int, image_size: Optional[Tuple[int, int]] = None, max_prefix: int = 16) -> str:
    """What to pass for ``num_tokens`` tokens: the fewest prefix tokens that leave a patch grid (square, or with the
    aspect ratio of ``image_size``), said with the numbers.

    Example::

        >>> grid_advice(18)  # a distilled DeiT at 64 px: class + distillation token + 4x4 patches  # doctest: +ELLIPSIS
        '18 tokens fit 2 prefix tokens + a 4x4 patch grid (a square image): pass reshape=TokenGrid(prefix_tokens=2) (prefix tokens: ...)'
        >>> grid_advice(24, (32, 48))
        '24 tokens fit 0 prefix tokens + a 4x6 patch grid: pass reshape=TokenGrid(prefix_tokens=0, height=4, width=6)'
    """
    for prefix in range(0, min(max_prefix, num_tokens - 1) + 1):
        grid = patch_grid(num_tokens - prefix, image_size)
        if grid is None or grid[0] * grid[1] < 4:  # a 1x1 or 1x2 "grid" is no map
            continue
        count = f"{prefix} prefix token{'' if prefix == 1 else 's'}"
        size = "" if grid[0] == grid[1] else f", height={grid[0]}, width={grid[1]}"
        which = " (prefix tokens: a class token, + a distillation token in a distilled DeiT, + register tokens)" if prefix else ""
        image = " (a square image)" if image_size is None else ""
        layout = f"TokenGrid(prefix_tokens={prefix}{size})"
        argument = f"'vit' (= {layout})" if prefix == 1 and not size else layout
        return f"{num_tokens} tokens fit {count} + a {grid[0]}x{grid[1]} patch grid{image}: pass reshape={argument}{which}"
    shape = "square " if image_size is None else ""
    return f"{num_tokens} tokens form no {shape}patch grid after up to {max_prefix} prefix tokens: give TokenGrid(prefix_tokens=..., height=..., width=...)"


class ChannelsLast(TokenGrid):
    """Channels-last feature maps ``(N, H, W, C)`` <-> ``(N, C, H, W)`` (``reshape="nhwc"``).

    A ``TokenGrid`` without prefix tokens whose "tokens" are already laid out on the grid, so it goes
    wherever a ``TokenGrid`` goes (gradients flow through the permutation; the prefix given to
    ``to_tokens`` is ignored).

    Example::

        >>> import torch
        >>> x = torch.randn(2, 3, 4, 5)  # N, H, W, C
        >>> maps = ChannelsLast().to_grid(x)
        >>> maps.shape, torch.equal(maps[1, 4, 2, 3], x[1, 2, 3, 4])
        (torch.Size([2, 5, 3, 4]), True)
        >>> torch.equal(ChannelsLast().to_tokens(maps, x[:, :0]), x)
        True
    """

    output_dims = 4

    def __init__(self) -> None:
        super().__init__(prefix_tokens=0)

    def __repr__(self) -> str:
        return "ChannelsLast()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ChannelsLast)

    def __hash__(self) -> int:
        return hash(ChannelsLast)

    def to_grid(self, tokens: Tensor) -> Tensor:
        """``(N, H, W, C)`` -> ``(N, C, H, W)``."""
        if tokens.dim() != 4:
            raise ValueError(f"reshape='nhwc' needs a channels-last (N, H, W, C) output, got shape {tuple(tokens.shape)}")
        return tokens.permute(0, 3, 1, 2)

    def to_tokens(self, grid: Tensor, prefix: Optional[Tensor] = None) -> Tensor:
        """``(M, C, H, W)`` -> ``(M, H, W, C)``; ``prefix`` is ignored (there are no prefix tokens)."""
        if grid.dim() != 4:
            raise ValueError(f"grid must be (M, C, H, W), got shape {tuple(grid.shape)}")
        return grid.permute(0, 2, 3, 1)


#: What ``reshape=`` accepts: None (the layer outputs ``(N, C, h, w)``), ``"vit"``, ``"nhwc"`` or a ``TokenGrid``.
ReshapeLike = Union[None, str, TokenGrid]

#: The strings ``reshape=`` accepts.
RESHAPE_NAMES = ("vit", "nhwc")


def as_token_grid(reshape: ReshapeLike) -> Optional[TokenGrid]:
    """Validate ``reshape=``: None, ``"vit"`` (one class token), ``"nhwc"`` (channels-last maps, ``ChannelsLast``)
    or a ``TokenGrid``."""
    if reshape is None or isinstance(reshape, TokenGrid):
        return reshape
    if isinstance(reshape, str) and reshape == "vit":
        return TokenGrid(prefix_tokens=1)
    if isinstance(reshape, str) and reshape == "nhwc":
        return ChannelsLast()
    raise ValueError(f"reshape={reshape!r} is not valid; choose from [None, 'vit', TokenGrid(prefix_tokens=..., height=..., width=...), 'nhwc']")


# Layouts that target_layer="auto" chose, by module: LayerCapture uses them when no reshape= is given. An explicit
# target layer (resolve_layers) forgets its entry, so the latest resolution of a module decides.
_AUTO_LAYOUTS: "weakref.WeakKeyDictionary[nn.Module, TokenGrid]" = weakref.WeakKeyDictionary()


def remember_layout(module: nn.Module, layout: Optional[TokenGrid]) -> None:
    """Record (or, with None, forget) the layout ``target_layer="auto"`` chose for ``module``."""
    if layout is None:
        _AUTO_LAYOUTS.pop(module, None)
    else:
        _AUTO_LAYOUTS[module] = layout


def remembered_layout(module: nn.Module) -> Optional[TokenGrid]:
    """The layout ``target_layer="auto"`` chose for ``module`` (None: none, the output is ``(N, C, H, W)``)."""
    return _AUTO_LAYOUTS.get(module)
