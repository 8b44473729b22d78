"""LeGrad's inputs: gradients of each vision-transformer block's class score w.r.t. that block's attention maps.

For every block ``l`` the *block score* ``s^l`` is the model's own head applied to the block's output tokens (the final
norm, then the class token for torchvision's ``VisionTransformer``, ``forward_head`` with its pooling for timm's);
for the last block it is the model's logits. ``attention_gradients`` runs the model once and, per block, takes
``d s^l_target / d A^l`` with ``torch.autograd.grad``, where ``A^l`` are the post-softmax attention probabilities
``(N, heads, queries, keys)``; it returns LeGrad's relevance per block: the ReLU of that gradient averaged over heads
and queries, prefix keys (class and register tokens) dropped (torchcam 0.5.0's ``LeGrad``).

How the attention maps are reached, without changing the model for longer than the call (everything is put back on
exit, also on exceptions):

- timm: each ``blocks[i].attn`` runs its unfused path (``fused_attn`` set to False for the call and restored); a
  forward hook on its ``attn_drop`` (identity in eval mode) receives the probabilities.
- torchvision: a forward pre-hook asks each ``encoder.layers[i].self_attention`` (``nn.MultiheadAttention``) for
  per-head weights, and a forward hook replays ``out_proj(A V)`` from them so the block output depends on them.

The captured ``A^l`` is handed on as a fresh autograd leaf, so the gradient exists also when every parameter is frozen.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cam_callbacks.utils.outputs import OutputTransform, logits_of
from cam_callbacks.utils.targets import check_target_range


@dataclass
class VisionTransformerParts:
    """What LeGrad needs of a vision transformer: its blocks, their attention, the head, the token layout."""

    kind: str
    blocks: List[nn.Module]
    attentions: List[nn.Module]
    head: Callable[[Tensor], Tensor]
    prefix_tokens: int
    patch_size: Tuple[int, int]


def _pair(value: Any) -> Tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _timm_parts(vit: Any) -> Optional[VisionTransformerParts]:
    blocks = list(getattr(vit, "blocks", []))
    if not blocks or not all(hasattr(getattr(b, "attn", None), "attn_drop") and hasattr(b.attn, "fused_attn") for b in blocks):
        return None
    norm, forward_head = vit.norm, vit.forward_head
    return VisionTransformerParts(
        "timm",
        blocks,
        [b.attn for b in blocks],
        lambda tokens: forward_head(norm(tokens)),
        int(vit.num_prefix_tokens),
        _pair(vit.patch_embed.patch_size),
    )


def _torchvision_parts(vit: Any) -> Optional[VisionTransformerParts]:
    encoder: Any = getattr(vit, "encoder", None)
    blocks = list(getattr(encoder, "layers", []))
    if not blocks or not all(isinstance(getattr(b, "self_attention", None), nn.MultiheadAttention) for b in blocks):
        return None
    ln, heads = encoder.ln, vit.heads
    return VisionTransformerParts("torchvision", blocks, [b.self_attention for b in blocks], lambda tokens: heads(ln(tokens)[:, 0]), 1, _pair(vit.patch_size))


def vision_transformer_parts(model: nn.Module) -> VisionTransformerParts:
    """The first timm or torchvision ``VisionTransformer`` in ``model`` (itself or a submodule, e.g. in a wrapper).

    Raises:
        ValueError: When there is none (a CNN, a Swin, a Hugging Face ViT): the message says what to use instead.
    """
    for module in model.modules():
        if hasattr(module, "forward_head") and hasattr(module, "num_prefix_tokens") and hasattr(module, "patch_embed"):
            parts = _timm_parts(module)
        elif hasattr(module, "encoder") and hasattr(module, "heads") and hasattr(module, "patch_size"):
            parts = _torchvision_parts(module)
        else:
            continue
        if parts is not None:
            return parts
    raise ValueError(
        f"legrad needs a vision transformer: a timm VisionTransformer (blocks[i].attn) or a torchvision vit_* "
        f"(encoder.layers[i].self_attention), and {type(model).__name__} contains neither. For a CNN use a layer-based "
        "method (e.g. method='gradcam' or 'layercam'); for other transformers (Swin, Hugging Face ViT) use method='gradcam' "
        "with target_layer='auto' or reshape='vit'"
    )


def _replayed_attention(module: nn.MultiheadAttention, value: Tensor, attention: Tensor) -> Tensor:
    """``out_proj(A V)`` of a batch-first ``nn.MultiheadAttention`` from per-head probabilities ``A``."""
    n, tokens, dim = value.shape
    heads = module.num_heads
    bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * dim :]
    v = F.linear(value, module.in_proj_weight[2 * dim :], bias).reshape(n, tokens, heads, dim // heads).transpose(1, 2)
    return module.out_proj(torch.matmul(attention, v).transpose(1, 2).reshape(n, attention.shape[-2], dim))


@contextmanager
def _captured_attention(parts: VisionTransformerParts) -> Iterator[Tuple[List[Tensor], List[Tensor]]]:
    """Inside the block: ``(attention leaves, block outputs)`` appended per forward call; all undone on exit."""
    attentions: List[Tensor] = []
    tokens: List[Tensor] = []
    requested: Dict[nn.Module, Tuple[bool, bool]] = {}

    def leaf(attention: Tensor) -> Tensor:
        attentions.append(attention.detach().requires_grad_(True))
        return attentions[-1]

    def keep_tokens(module: nn.Module, inputs: Any, output: Tensor) -> None:
        tokens.append(output)

    def ask_weights(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any]) -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        if len(args) > 3 or not module.batch_first:
            raise ValueError("legrad: torchvision attention must be batch-first and called as (q, k, v, **kwargs)")
        requested[module] = (bool(kwargs.get("need_weights", True)), bool(kwargs.get("average_attn_weights", True)))
        return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

    def replay(module: nn.Module, args: Tuple[Any, ...], kwargs: Dict[str, Any], output: Any) -> Tuple[Tensor, Optional[Tensor]]:
        assert isinstance(module, nn.MultiheadAttention)
        attention = leaf(output[1])
        need_weights, average = requested.pop(module)  # what the caller asked for, before ask_weights changed it
        weights = (attention.mean(dim=1) if average else attention) if need_weights else None
        return _replayed_attention(module, args[2], attention), weights

    with ExitStack() as stack:
        attention: Any
        for block, attention in zip(parts.blocks, parts.attentions):
            stack.callback(block.register_forward_hook(keep_tokens).remove)
            if parts.kind == "timm":
                stack.callback(setattr, attention, "fused_attn", attention.fused_attn)
                attention.fused_attn = False
                stack.callback(attention.attn_drop.register_forward_hook(lambda m, i, out: leaf(out)).remove)
            else:
                stack.callback(attention.register_forward_pre_hook(ask_weights, with_kwargs=True).remove)
                stack.callback(attention.register_forward_hook(replay, with_kwargs=True).remove)
        yield attentions, tokens


def _relevance(score: Tensor, attention: Tensor, prefix_tokens: int) -> Tensor:
    (grad,) = torch.autograd.grad(score.sum(), attention, retain_graph=True, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(attention)
    return torch.relu(grad).mean(dim=(1, 2))[:, prefix_tokens:]


def attention_gradients(
    model: nn.Module, images: Tensor, targets: Optional[Tensor], output_transform: OutputTransform = None
) -> Tuple[Tensor, Tuple[int, int], Tensor, Tensor]:
    """LeGrad relevance of every block, from one forward pass and one backward pass per block.

    Args:
        model: A timm or torchvision vision transformer, or a module holding one (in eval mode).
        images: ``(N, C, H, W)`` input batch (not modified).
        targets: ``(N,)`` classes, or None for the top-1 prediction.
        output_transform: Where the logits are in the model's output (``logits_of``).

    Returns:
        ``(relevance (N, blocks, h * w), (h, w) patch grid, logits (N, classes) detached, targets (N,))``.
    """
    parts = vision_transformer_parts(model)
    grid = (images.shape[-2] // parts.patch_size[0], images.shape[-1] // parts.patch_size[1])
    with torch.enable_grad(), _captured_attention(parts) as (attentions, tokens):
        logits = logits_of(model(images.detach()), output_transform, images.shape[0])
        if targets is None:
            targets = logits.detach().argmax(dim=1)
        else:
            check_target_range(targets, logits.shape[1])
        if len(attentions) != len(parts.blocks) or len(tokens) != len(parts.blocks):
            raise RuntimeError(f"legrad: {len(attentions)} attention maps captured for {len(parts.blocks)} blocks")
        if attentions[0].shape[-1] != parts.prefix_tokens + grid[0] * grid[1]:
            raise ValueError(f"legrad: {attentions[0].shape[-1]} keys do not fit a {grid[0]}x{grid[1]} patch grid")
        relevance = [_relevance(parts.head(t).gather(1, targets[:, None]), a, parts.prefix_tokens) for t, a in zip(tokens, attentions)]
    return torch.stack(relevance, dim=1).detach(), grid, logits.detach(), targets
