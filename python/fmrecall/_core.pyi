"""Type stubs of the C++ extension fmrecall._core (pybind11). Arrays are C-contiguous numpy arrays
of the stated dtype; long calls release the GIL. Model methods that read the tables hold the model's
lock shared (n_features, single_rows and aware_rows too), grow_rows / grow_features / restore / set_weights hold
it exclusively (taken after the GIL is released).
Every `threads` argument must be in [0, MAX_THREADS] (0 = all cores), else InputError (ValueError)."""

from typing import Callable, ClassVar, Dict, List, Optional, SupportsIndex, SupportsInt, Tuple, Union

import numpy as np
import numpy.typing as npt

_I32 = npt.NDArray[np.int32]
_I64 = npt.NDArray[np.int64]
_F32 = npt.NDArray[np.float32]
_F64 = npt.NDArray[np.float64]
_U8 = npt.NDArray[np.uint8]
_CsrArgs = Tuple[_I64, _I32, _I32, Optional[_F32]]

class InputError(ValueError): ...
class FileMissing(FileNotFoundError): ...

def best_arch() -> str: ...

MAX_THREADS: int

class Loss:
    """The training losses (cpp/fmrecall/loss.h), the one table Python reads (by name:
    Loss.__members__[name]). A plain int (a member's value) is accepted wherever a Loss is."""

    logistic: ClassVar[Loss]
    squared: ClassVar[Loss]
    bpr: ClassVar[Loss]  # pairwise: implicit factored data only
    __members__: ClassVar[Dict[str, Loss]]
    def __init__(self, value: Union[SupportsInt, SupportsIndex]) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...
    def __int__(self) -> int: ...
    def __index__(self) -> int: ...

def max_threads() -> int: ...

# Parsers: regular files only (else InputError), lines < 16 MiB, Ctrl-C checked every 16 MiB
# (KeyboardInterrupt). The dict: n_fields, n_features (int), indptr (_I64), fields, features (_I32),
# values (_F32 or None when all are 1), labels (_F32).
def parse_libffm(path: str) -> Dict[str, object]: ...
def parse_libsvm(path: str, field_of_feature: _I32) -> Dict[str, object]: ...

# One streaming pass: sink(block) for the rows of each 16 MiB chunk (a dict as above, its indptr from
# 0 within the block, its values None when all of the block's are 1); an exception from sink stops
# the parse and propagates. Returns the file's row count.
def stream_libffm(path: str, sink: Callable[[Dict[str, object]], object]) -> int: ...
def stream_libsvm(path: str, field_of_feature: _I32, sink: Callable[[Dict[str, object]], object]) -> int: ...
def write_libffm(
    path: str, indptr: _I64, fields: _I32, features: _I32, values: Optional[_F32], labels: Optional[_F32]
) -> None: ...
def permutation(n: int, seed: int) -> _I64: ...
def sample_items(weights: _F64, n: int, seed: int) -> _I32: ...

class FactoredData:
    def __init__(
        self,
        users: _CsrArgs,
        items: _CsrArgs,
        context: Optional[_CsrArgs],
        ev_user: _I32,
        ev_item: _I32,
        labels: Optional[_F32],
        sample_weights: Optional[_F64],
        pos_ptr: Optional[_I64],
        pos_items: Optional[_I32],
        hist_field: int = -1,
        hist_feat: Optional[_I32] = None,
        cold: List[Tuple[int, int, float]] = ...,
    ) -> None: ...
    @property
    def n_events(self) -> int: ...

class SplitLayout:
    @property
    def dim(self) -> int: ...
    @property
    def k(self) -> int: ...
    # (offset, kind 'ss' | 'sa' | 'bs' | 'ab', query field or -1, item field or -1), in vector order
    def blocks(self) -> List[Tuple[int, str, int, int]]: ...

class Model:
    def __init__(
        self,
        n_features: int,
        n_fields: int,
        k: int,
        aware: _U8,
        aware_row: Optional[_I32],
        aware_rows: int,
        init_std: float,
        seed: int,
        normalize: bool,
        single_row: Optional[_I32] = None,
        single_rows: int = 0,
        scale: float = 1.0,
    ) -> None: ...
    @property
    def n_features(self) -> int: ...
    @property
    def n_fields(self) -> int: ...
    @property
    def k(self) -> int: ...
    @property
    def kp(self) -> int: ...
    @property
    def single_rows(self) -> int: ...
    @property
    def aware_rows(self) -> int: ...
    @property
    def normalize(self) -> bool: ...
    @property
    def scale(self) -> float: ...
    # checks only the indptr entries of the rows in `order` (O(len(order)) per call, not O(rows))
    def train(
        self,
        indptr: _I64,
        fields: _I32,
        features: _I32,
        values: Optional[_F32],
        labels: _F32,
        order: _I64,
        loss: Union[Loss, int],
        eta: float,
        l2_linear: float,
        l2_factors: float,
        threads: int,
    ) -> float: ...
    def predict(self, indptr: _I64, fields: _I32, features: _I32, values: Optional[_F32], threads: int) -> _F32: ...
    def train_factored(
        self,
        data: FactoredData,
        order: _I64,
        loss: Union[Loss, int],
        negatives: int,
        candidates: int,
        seed: int,
        eta: float,
        l2_linear: float,
        l2_factors: float,
        threads: int,
    ) -> Tuple[float, int]: ...
    def score_factored(self, data: FactoredData, items: Optional[_I32], threads: int) -> _F32: ...
    def split_layout(self, side: _U8) -> SplitLayout: ...
    def query_vectors(
        self, layout: SplitLayout, indptr: _I64, fields: _I32, features: _I32, values: Optional[_F32], threads: int
    ) -> Tuple[_F32, _F32]: ...
    def item_vectors(
        self, layout: SplitLayout, indptr: _I64, fields: _I32, features: _I32, values: Optional[_F32], threads: int
    ) -> _F32: ...
    # rows added to (v, W)
    def grow_rows(self, single: _I32, aware: _I32, init_std: float, seed: int) -> Tuple[int, int]: ...
    def grow_features(self, n_new: int) -> None: ...
    def finite(self) -> bool: ...
    def snapshot(self) -> None: ...
    def restore(self) -> None: ...
    def drop_snapshot(self) -> None: ...
    def average(self, beta: float) -> None: ...
    def swap_average(self) -> None: ...
    def drop_average(self) -> None: ...
    def get_weights(self) -> Dict[str, object]: ...
    def set_weights(self, bias: float, linear: _F32, v: Optional[_F32], W: Optional[_F32]) -> None: ...
