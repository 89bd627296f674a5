"""fmrecall: one-stage recall with FM / FFM / hybrid models split exactly into query and item vectors."""

from __future__ import annotations

__version__ = "0.1.0"

from . import metrics
from ._core import best_arch
from ._limits import MAX_THREADS
from .dataset import Dataset
from .diagnostics import DtypeMismatchWarning, UnseenValueWarning
from .interactions import Interactions
from .models import FFM, FM, HybridFM, NotFittedError
from .persist import load
from .recall import FaissIndex, ItemIndex, MilvusIndex, Recaller, SearchResult, configure_faiss
from .schema import Categorical, Hashed, MultiCategorical, Numeric, Schema, Vector
from .sides import Sides
from .source import TrainingSource
from .split import Split
from .training import DivergenceError

__all__ = [
    "Dataset",
    "Interactions",
    "TrainingSource",
    "Schema",
    "Categorical",
    "MultiCategorical",
    "Numeric",
    "Hashed",
    "Vector",
    "FM",
    "FFM",
    "HybridFM",
    "Sides",
    "Split",
    "Recaller",
    "SearchResult",
    "FaissIndex",
    "ItemIndex",
    "MilvusIndex",
    "configure_faiss",
    "NotFittedError",
    "UnseenValueWarning",
    "DtypeMismatchWarning",
    "DivergenceError",
    "load",
    "metrics",
    "best_arch",
    "MAX_THREADS",
    "__version__",
]
