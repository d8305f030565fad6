"""Class labels as users give them: a class name, an index, or nothing (unconditional)."""

from __future__ import annotations

from collections.abc import Sequence


def resolve_label(label: int | str | None, num_classes: int | None, class_names: Sequence[str]) -> int | None:
    """A class index from an index, a digit string or a class name; None stays None."""
    if label is None:
        return None
    if num_classes is None:
        raise ValueError("this model is unconditional: it takes no class label")
    if isinstance(label, str) and not label.isdigit():
        if label not in class_names:
            raise ValueError(f"unknown class {label!r}; expected one of: {', '.join(class_names)}")
        return list(class_names).index(label)
    index = int(label)
    if not 0 <= index < num_classes:
        raise ValueError(f"class label {index} is outside [0, {num_classes - 1}]")
    return index


def labels_for(
    class_label: str | None, n: int, num_classes: int | None, class_names: Sequence[str]
) -> tuple[int | None, ...] | None:
    """Per-image labels for a request: None (unconditional), 'all' (cycle through the classes), or one class."""
    if class_label is None:
        return None
    if class_label == "all":
        if num_classes is None:
            raise ValueError("this model is unconditional: it takes no class label")
        return tuple(k % num_classes for k in range(n))
    return (resolve_label(class_label, num_classes, class_names),) * n
