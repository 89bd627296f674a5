"""Data sets: a seeded synthetic click log with planted preferences (``synthetic``) and the
MovieLens-100K loader (``movielens100k``)."""

from __future__ import annotations

from .movielens import GENRES, MovieLens, movielens100k
from .synthetic import SyntheticLog, synthetic

__all__ = ["GENRES", "MovieLens", "movielens100k", "SyntheticLog", "synthetic"]
