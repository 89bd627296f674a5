"""Which side of a request every field belongs to: user, context (together: the query) or item."""

from __future__ import annotations

from typing import Dict, Iterable, List, Sequence, Tuple, Union

import numpy as np

FieldRef = Union[int, str]
SIDES = ("user", "context", "item")


class Sides:
    """Assignment of every field to ``user``, ``context`` or ``item``.

    Fields are given by index (or by name once a Schema names them: ``resolve(names)``). The query
    side is user ∪ context; the item side is item. Context fields are known only at request time;
    they are query fields like the user's, so user×context pairs land in the per-query constant b_q
    and context×item pairs in <q, p>.

    >>> Sides(user=[0], context=[2, 3], item=[1])
    """

    def __init__(
        self, user: Iterable[FieldRef] = (), context: Iterable[FieldRef] = (), item: Iterable[FieldRef] = ()
    ) -> None:
        self.user: Tuple[FieldRef, ...] = tuple(_ref(f, "user") for f in user)
        self.context: Tuple[FieldRef, ...] = tuple(_ref(f, "context") for f in context)
        self.item: Tuple[FieldRef, ...] = tuple(_ref(f, "item") for f in item)
        seen: Dict[FieldRef, str] = {}
        doubles: List[str] = []
        for side in SIDES:
            for f in getattr(self, side):
                if f in seen:
                    doubles.append(f"field {f!r} is in both {seen[f]!r} and {side!r}")
                seen.setdefault(f, side)
        if doubles:
            raise ValueError("Sides: " + "; ".join(doubles))
        if not self.item:
            raise ValueError("Sides: no item field")
        if not (self.user or self.context):
            raise ValueError("Sides: no user or context field")

    @property
    def query(self) -> Tuple[FieldRef, ...]:
        return self.user + self.context

    def resolve(self, names: Sequence[str]) -> "Sides":
        """Sides with field names replaced by their indices in ``names``."""
        index = {n: i for i, n in enumerate(names)}

        def one(f: FieldRef) -> int:
            if isinstance(f, str):
                if f not in index:
                    raise ValueError(f"Sides: unknown field name {f!r}; known: {list(names)}")
                return index[f]
            return f

        return Sides(
            user=[one(f) for f in self.user], context=[one(f) for f in self.context], item=[one(f) for f in self.item]
        )

    def check(self, n_fields: int) -> None:
        """Every field 0..n_fields-1 assigned exactly once, by index; ValueError naming the culprits."""
        refs = self.user + self.context + self.item
        names = [f for f in refs if isinstance(f, str)]
        if names:
            raise ValueError(f"Sides: field names {names} need resolving against a schema")
        indices = [int(f) for f in refs]  # all ints here: names were rejected above
        out = sorted(f for f in indices if not 0 <= f < n_fields)
        if out:
            raise ValueError(f"Sides: fields {out} do not exist (the model has {n_fields} fields)")
        missing = sorted(set(range(n_fields)) - set(indices))
        if missing:
            raise ValueError(f"Sides: fields {missing} are not assigned to user, context or item")

    def item_mask(self, n_fields: int) -> np.ndarray:
        """uint8 (n_fields,): 1 for item fields, 0 for query (user / context) fields."""
        self.check(n_fields)
        mask = np.zeros(n_fields, dtype=np.uint8)
        mask[[int(f) for f in self.item]] = 1
        return mask

    def side_of(self, field: FieldRef) -> str:
        for side in SIDES:
            if field in getattr(self, side):
                return side
        raise KeyError(field)

    def to_dict(self) -> Dict[str, List[FieldRef]]:
        return {"user": list(self.user), "context": list(self.context), "item": list(self.item)}

    @classmethod
    def from_dict(cls, d: Dict[str, List[FieldRef]]) -> "Sides":
        return cls(user=d.get("user", ()), context=d.get("context", ()), item=d.get("item", ()))

    def __eq__(self, other: object) -> bool:  # the same assignment, whatever the listing order
        return isinstance(other, Sides) and all(
            sorted(map(str, getattr(self, s))) == sorted(map(str, getattr(other, s))) for s in SIDES
        )

    def __repr__(self) -> str:
        return f"Sides(user={list(self.user)}, context={list(self.context)}, item={list(self.item)})"


def _ref(f: FieldRef, side: str) -> FieldRef:
    if isinstance(f, (bool, np.bool_)):
        raise ValueError(f"Sides: {side} field {f!r} is not a field index or name")
    if isinstance(f, (int, np.integer)):
        return int(f)
    if isinstance(f, str):
        return f
    raise ValueError(f"Sides: {side} field {f!r} is not a field index or name")
