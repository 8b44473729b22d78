"""Where the logits are in what a model returns: ``output_transform``.

A classifier may return its logits as a tensor, or inside a dict (``{"logits": ..., "features": ...}``),
a tuple (``(logits, features)``) or an object (Hugging Face's ``ImageClassifierOutput`` has ``.logits``).
``output_transform`` says where: None (the output is the logits tensor), a ``str`` (a key of a mapping or
an attribute), an ``int`` (an index into a tuple or list) or a callable ``output -> logits``.
``logits_of`` applies it wherever the library calls the model and needs logits; the model itself is
never wrapped or changed.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, List, Mapping, Optional, Union

from torch import Tensor

#: What ``output_transform=`` accepts: None, a key or attribute name, a tuple index, or a callable ``output -> logits``.
OutputTransform = Union[None, str, int, Callable[[Any], Tensor]]

_VALID = "None (the model returns the logits tensor), a key or attribute name (e.g. 'logits'), an int index into a tuple, or a callable output -> logits"


def check_output_transform(value: Any) -> OutputTransform:
    """``value`` if it is a valid ``output_transform`` (checked by type only; the output is checked at the first forward)."""
    if value is None or isinstance(value, str) or callable(value) or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise TypeError(f"output_transform must be {_VALID}, got {type(value).__name__} {value!r}")


def _shape(value: Any) -> str:
    return str(tuple(value.shape)) if isinstance(value, Tensor) else type(value).__name__


def _attributes(output: Any) -> List[str]:
    if dataclasses.is_dataclass(output):
        return [f.name for f in dataclasses.fields(output)]
    return sorted(name for name in getattr(output, "__dict__", {}) if not name.startswith("_"))


def describe_output(output: Any) -> str:
    """What the model returned, for error messages: type, keys or attributes, tuple length and element shapes.

    Example::

        >>> import torch
        >>> describe_output({"logits": torch.zeros(2, 3), "features": torch.zeros(2, 8)})
        "a dict with keys ['logits', 'features'] (shapes (2, 3), (2, 8))"
        >>> describe_output((torch.zeros(2, 3), None))
        'a tuple of 2 elements of shapes (2, 3), NoneType'
    """
    if isinstance(output, Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    name = type(output).__name__
    if isinstance(output, Mapping):
        keys = list(output)
        return f"a {name} with keys {keys} (shapes {', '.join(_shape(output[k]) for k in keys)})"
    if isinstance(output, (tuple, list)):
        return f"a {name} of {len(output)} elements of shapes {', '.join(_shape(v) for v in output)}"
    attributes = _attributes(output)
    if attributes:
        return f"a {name} with attributes {attributes} (shapes {', '.join(_shape(getattr(output, a, None)) for a in attributes)})"
    return f"a {name}"


def _is_logits(value: Any, n: Optional[int]) -> bool:
    return isinstance(value, Tensor) and value.dim() == 2 and (n is None or value.shape[0] == n)


def _suggestion(output: Any, n: Optional[int]) -> Optional[Union[str, int]]:
    """The ``output_transform`` that would select an ``(n, C)`` tensor of ``output`` ('logits' first), or None."""
    if isinstance(output, Mapping):
        keys = [k for k in output if isinstance(k, str)]
        candidates: List[Any] = [k for k in keys if k == "logits"] + [k for k in keys if k != "logits"]
        return next((k for k in candidates if _is_logits(output[k], n)), None)
    if isinstance(output, (tuple, list)):
        return next((i for i, v in enumerate(output) if _is_logits(v, n)), None)
    attributes = ["logits"] + [a for a in _attributes(output) if a != "logits"]
    return next((a for a in attributes if _is_logits(getattr(output, a, None), n)), None)


def _names(output: Any) -> List[str]:
    """The keys (of a mapping) or attribute names (of an object) that ``output_transform`` may name."""
    if isinstance(output, Mapping):
        return [k for k in output if isinstance(k, str)]
    return _attributes(output)


def _on_tensor(transform: str, output: Tensor) -> ValueError:
    """A name on a tensor output: ``Tensor.logit``, ``.T``, ``.data`` resolve, but none of them selects the logits."""
    member = getattr(type(output), transform, None)
    kind = "method" if callable(member) else "attribute" if member is not None else None
    what = f"{transform!r} would be the tensor {kind} Tensor.{transform}, not a part of the output" if kind else f"a tensor has no {transform!r}"
    return ValueError(
        f"output_transform={transform!r}: the model returns {describe_output(output)}, which is used as the logits as it is; "
        f"did you mean output_transform=None? ({what}; a name selects a key of a dict output or an attribute of an output "
        "object, such as Hugging Face's 'logits')"
    )


def _select(output: Any, transform: OutputTransform) -> Any:
    """``output`` through ``transform``; a ValueError naming ``output_transform`` when the key, attribute or index is missing,
    or when a name resolves to a method (``Tensor.logit`` for ``"logit"``) instead of a part of the output."""
    if transform is None:
        return output
    if isinstance(transform, str):
        if isinstance(output, Tensor):
            raise _on_tensor(transform, output)
        if isinstance(output, Mapping):
            if transform in output:
                return output[transform]
        elif hasattr(output, transform) and not callable(getattr(output, transform)):
            return getattr(output, transform)
        what = "key" if isinstance(output, Mapping) else "attribute"
        if not isinstance(output, Mapping) and hasattr(output, transform):
            what = f"data attribute ({transform!r} is a method of {type(output).__name__})"
    elif isinstance(transform, int):
        if isinstance(output, (tuple, list)) and -len(output) <= transform < len(output):
            return output[transform]
        what = "index" if isinstance(output, (tuple, list)) else "index (it is not a tuple or list)"
    else:
        return transform(output)
    suggestion = _suggestion(output, None)
    hint = f"; pass output_transform={suggestion!r}" if suggestion is not None else ""
    close = difflib.get_close_matches(transform, _names(output), n=1, cutoff=0.6) if isinstance(transform, str) else []
    if close and close[0] != suggestion:
        hint += f" (did you mean {close[0]!r}?)" if hint else f"; did you mean {close[0]!r}?"
    raise ValueError(f"output_transform={transform!r}: no such {what} in the model's output, {describe_output(output)}{hint}")


def logits_of(output: Any, transform: OutputTransform = None, n: Optional[int] = None) -> Tensor:
    """The logits in a model's ``output``, selected by ``transform`` (see ``OutputTransform``).

    Args:
        output: What the model returned.
        transform: Where the logits are: None, a key or attribute, an index, or a callable ``output -> logits``.
        n: The batch size: when given, the logits must be an ``(n, num_classes)`` tensor.

    Raises:
        ValueError: The key, attribute or index is missing, or the result is not an ``(n, num_classes)`` tensor; the
            message shows what the model returned and, when it can, which ``output_transform`` to pass.

    Example::

        >>> import torch
        >>> logits_of({"logits": torch.zeros(2, 3)}, "logits", n=2).shape
        torch.Size([2, 3])
        >>> logits_of({"logits": torch.zeros(2, 3), "features": torch.zeros(2, 8)}, None, n=2)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: the model returned a dict with keys ['logits', 'features'] ... logits tensor; pass output_transform='logits'
    """
    selected = _select(output, transform)
    if transform is None and not isinstance(output, Tensor):
        suggestion = _suggestion(output, n)
        hint = f"pass output_transform={suggestion!r}" if suggestion is not None else f"pass output_transform= ({_VALID})"
        raise ValueError(f"the model returned {describe_output(output)} instead of an (N, num_classes) logits tensor; {hint}")
    if n is None or _is_logits(selected, n):
        if not isinstance(selected, Tensor):
            raise ValueError(
                f"output_transform={transform!r} gives {describe_output(selected)} from the model's output "
                f"({describe_output(output)}), not an (N, num_classes) logits tensor"
            )
        return selected
    if transform is None:
        raise ValueError(f"the model must return logits of shape (N, num_classes) = ({n}, C); it returned {_shape(selected)}")
    suggestion = _suggestion(output, n)
    hint = f"; pass output_transform={suggestion!r}" if suggestion is not None and suggestion != transform else ""
    raise ValueError(
        f"output_transform={transform!r} gives {describe_output(selected)} from the model's output ({describe_output(output)}), "
        f"not (N, num_classes) = ({n}, C) logits{hint}"
    )
