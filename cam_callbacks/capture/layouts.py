"""Token layouts <-> feature maps, so CAM methods run on vision transformers.

A transformer block outputs tokens ``(N, P + h*w, C)``: ``P`` prefix tokens (the class token, maybe
distillation or register tokens) followed by one token per image patch in row-major order. CAM
methods need a feature map ``(N, C, h, w)``. :class:`TokenGrid` converts both ways:

- :meth:`TokenGrid.to_grid` drops the prefix tokens and lays the patch tokens out on the grid;
- :meth:`TokenGrid.to_tokens` is its inverse, with the prefix tokens given, so a modified grid can
  be fed back into the network (Recipro-CAM, Ablation-CAM and the gradient methods use it).

``reshape="vit"`` everywhere means ``TokenGrid(prefix_tokens=1)`` (torchvision's ``VisionTransformer``,
timm's ViT/DeiT without distillation token). The recommended target layer on torchvision's
``vit_b_16`` is the first LayerNorm of the last encoder block,
``"encoder.layers.encoder_layer_11.ln_1"``: its output is what the last attention reads, so the class
token's gradient reaches every patch token there (the output of the *last* block reaches the
classifier through the class token alone, and its patch tokens get no gradient).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

__all__ = ["TokenGrid", "ReshapeLike", "as_token_grid"]


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
            raise ValueError(f"{num_tokens} tokens leave no patch token after {self.prefix_tokens} prefix token(s)")
        if self.height is None and self.width is None:
            side = math.isqrt(patches)
            if side * side != patches:
                raise ValueError(
                    f"{patches} patch tokens ({num_tokens} tokens - {self.prefix_tokens} prefix) do not form a square grid; "
                    "give TokenGrid(height=..., width=...) or the right prefix_tokens"
                )
            return side, side
        height = self.height if self.height is not None else patches // int(self.width)  # type: ignore[arg-type]
        width = self.width if self.width is not None else patches // height
        if height * width != patches:
            raise ValueError(f"a {height}x{width} grid does not hold the {patches} patch tokens")
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
                f"prefix must be ({grid.shape[0]}, {self.prefix_tokens}, {grid.shape[1]}) for a grid of shape "
                f"{tuple(grid.shape)}, got {tuple(prefix.shape)}"
            )
        patches = grid.flatten(2).transpose(1, 2)
        return torch.cat([prefix.to(patches.dtype), patches], dim=1)


#: What ``reshape=`` accepts: None (the layer outputs ``(N, C, h, w)``), ``"vit"`` or a :class:`TokenGrid`.
ReshapeLike = Union[None, str, TokenGrid]


def as_token_grid(reshape: ReshapeLike) -> Optional[TokenGrid]:
    """Validate ``reshape=``: None, ``"vit"`` (one class token) or a :class:`TokenGrid`."""
    if reshape is None or isinstance(reshape, TokenGrid):
        return reshape
    if isinstance(reshape, str) and reshape == "vit":
        return TokenGrid(prefix_tokens=1)
    raise ValueError(f"reshape={reshape!r} is not valid; choose from [None, 'vit', TokenGrid(prefix_tokens=..., height=..., width=...)]")
