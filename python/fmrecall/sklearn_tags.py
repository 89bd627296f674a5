"""scikit-learn recognition without depending on scikit-learn: the estimators' tags (classifier or
regressor by their loss), and NotFittedError as sklearn's own class when sklearn is loaded.

Nothing here imports scikit-learn unless scikit-learn itself asks (``__sklearn_tags__`` is only
called by sklearn), so ``import fmrecall`` works without it.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, Type

from .model_state import NotFittedError


def estimator_type(loss: Any) -> str:
    """sklearn's estimator type of a loss: "regressor" for "squared", else "classifier"."""
    return "regressor" if loss == "squared" else "classifier"


def sklearn_tags(model: Any) -> Any:
    """sklearn.utils.Tags (scikit-learn >= 1.6) of a model: binary classifier or regressor,
    sparse input accepted, y required, non-deterministic unless threads == 1 (Hogwild)."""
    from sklearn.utils import ClassifierTags, InputTags, RegressorTags, Tags, TargetTags

    kind = estimator_type(getattr(model, "loss", None))
    return Tags(
        estimator_type=kind,
        target_tags=TargetTags(required=True),
        classifier_tags=ClassifierTags(multi_class=False) if kind == "classifier" else None,
        regressor_tags=RegressorTags() if kind == "regressor" else None,
        non_deterministic=getattr(model, "threads", 0) != 1,
        input_tags=InputTags(sparse=True),
    )


_BRIDGED: Dict[type, Type[NotFittedError]] = {}


def not_fitted(message: str) -> NotFittedError:
    """fmrecall.NotFittedError, also an instance of sklearn.exceptions.NotFittedError when
    scikit-learn is loaded (so sklearn's checks and ``except`` clauses recognise it)."""
    module = sys.modules.get("sklearn.exceptions")
    theirs = getattr(module, "NotFittedError", None) if module is not None else None
    if not isinstance(theirs, type) or not issubclass(theirs, Exception):
        return NotFittedError(message)
    cls = _BRIDGED.get(theirs)
    if cls is None:
        cls = type("NotFittedError", (NotFittedError, theirs), {"__module__": NotFittedError.__module__})
        _BRIDGED[theirs] = cls
    return cls(message)
