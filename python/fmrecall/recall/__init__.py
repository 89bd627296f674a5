"""One-stage retrieval: the model's query side, an item index (one adapter per backend), exact scores.

recaller.py      Recaller: encode requests, build query vectors, delegate to the index, map item ids
base.py          ItemIndex, the interface every backend implements; request id filters
faiss_index.py   FaissIndex: exact / HNSW / IVF / factory indexes on this machine
faiss_segment.py one faiss index over a coordinate range; per-call search parameters
faiss_config.py  faiss's process-wide settings (set once) and per-call threads
search.py        the searches over one snapshot: single, segmented (certified), restricted
catalogue.py     the id store: ids per row, tombstones, lookup; item ids <-> internal ids (ItemKeys)
filters.py       exclude / restrict in every accepted form, as internal ids
milvus.py        MilvusIndex: the catalogue in Milvus (Lite or a cluster)
store.py         versioned, checksummed directories; pickling
rwlock.py        the readers–writer lock
"""

from .base import ItemIndex
from .faiss_config import EXACT_BLAS, configure_faiss
from .faiss_index import FaissIndex
from .milvus import MilvusIndex
from .recaller import Recaller
from .result import SearchResult

__all__ = ["Recaller", "SearchResult", "ItemIndex", "FaissIndex", "MilvusIndex", "configure_faiss", "EXACT_BLAS"]
