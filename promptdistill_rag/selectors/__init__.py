"""Token selectors: which query rows score the context, on top of shared attention math."""

from .base import TokenSelector, attention_scores
from .last_token import LastTokenSelector
from .query import QuerySelector

__all__ = ["LastTokenSelector", "QuerySelector", "TokenSelector", "attention_scores", "make_selector"]


def make_selector(name: str, *, signal: str = "softmax", head_reduction: str = "mean") -> TokenSelector:
    """Return the selector called ``name`` (``"query"`` or ``"last_token"``)."""
    selectors = {"query": QuerySelector, "last_token": LastTokenSelector}
    if name not in selectors:
        msg = f"unknown selector {name!r}; valid selectors are {', '.join(selectors)}"
        raise ValueError(msg)
    return selectors[name](signal=signal, head_reduction=head_reduction)
