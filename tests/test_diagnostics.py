"""Diagnostics instead of silence: a request column of another dtype than training, or a field whose
values are mostly unseen, raises one filterable warning per transform; the Recaller reports each
field's unseen share of the calling thread's last search."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import pandas as pd
import pytest

import fmrecall
from fmrecall import Categorical, Hashed, Interactions, MultiCategorical, Numeric, Recaller, Schema


def _schema():
    return Schema(
        [
            Categorical("user_id", "user"),
            Numeric("age", "user"),
            Categorical("hour", "context"),
            Hashed("item_id", "item", buckets=64),
            MultiCategorical("tags", "item", sep="|"),
        ]
    )


USERS = pd.DataFrame({"user_id": [1, 2, 3, 4], "age": [20.0, 30.0, 40.0, 50.0]})
ITEMS = pd.DataFrame({"item_id": [10, 11, 12], "tags": ["a|b", "b", "c"]})
EVENTS = pd.DataFrame({"user_id": [1, 2, 3, 4, 1, 2], "item_id": [10, 11, 12, 10, 11, 12], "hour": [1, 2, 3, 1, 2, 3]})


def _fitted():
    return _schema().fit([USERS, ITEMS, EVENTS])


def _caught(call):
    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        out = call()
    return out, [w for w in got if issubclass(w.category, UserWarning)]


def test_warning_categories_are_filterable_user_warnings():
    assert issubclass(fmrecall.UnseenValueWarning, UserWarning)
    assert issubclass(fmrecall.DtypeMismatchWarning, UserWarning)
    assert not issubclass(fmrecall.UnseenValueWarning, fmrecall.DtypeMismatchWarning)


def test_str_ids_where_training_had_ints_warn_once_per_call():
    schema = _fitted()
    request = pd.DataFrame({"user_id": ["1", "2"], "age": [20.0, 30.0], "hour": [1, 2]})
    rates = {}
    ds, got = _caught(lambda: schema.transform(request, side="query", unseen=rates))
    kinds = [w.category for w in got]
    assert kinds.count(fmrecall.DtypeMismatchWarning) == 1 and kinds.count(fmrecall.UnseenValueWarning) == 1
    mismatch = next(w for w in got if w.category is fmrecall.DtypeMismatchWarning)
    assert "'user_id'" in str(mismatch.message) and "string" in str(mismatch.message)
    assert mismatch.filename == __file__  # points at the caller, not at fmrecall
    assert rates == {"user_id": 1.0, "hour": 0.0}
    # every row got the neutral unseen feature of user_id (local 0): what used to be silent
    offsets = schema.offsets
    uid = ds.features[ds.fields == 0]
    np.testing.assert_array_equal(uid, [offsets[0], offsets[0]])
    # two mismatching fields in one call: still one warning, naming both
    both = pd.DataFrame({"item_id": ["10"], "tags": ["a"]})
    _, got = _caught(lambda: schema.transform(both, side="item"))
    assert [w.category for w in got] == [fmrecall.DtypeMismatchWarning]
    assert "'item_id'" in str(got[0].message)  # hashed: str "10" lands in another bucket than 10


def test_unseen_share_counts_values_and_warns_above_half():
    schema = _fitted()
    rates = {}
    # tags: 3 of the 5 listed values unseen (a share of values, not of rows); hashed item_id has none
    request = pd.DataFrame({"item_id": [10, 11, 12, 13], "tags": ["a|x", "y", "z", "b"]})
    _, got = _caught(lambda: schema.transform(request, side="item", unseen=rates))
    assert rates == {"tags": pytest.approx(3 / 5)}  # listed values: a, x, y, z, b -> x, y, z unseen
    assert [w.category for w in got] == [fmrecall.UnseenValueWarning]
    assert "60% of 'tags'" in str(got[0].message)
    users = pd.DataFrame({"user_id": [1, 2, 98, 99], "age": [1.0, 2.0, 3.0, 4.0]})  # exactly half: no warning
    _, got = _caught(lambda: schema.transform(users, side="user", unseen=rates))
    assert rates["user_id"] == 0.5 and got == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=fmrecall.UnseenValueWarning)
        schema.transform(pd.DataFrame({"user_id": [97, 98, 99], "age": [1.0] * 3}), side="user")  # silenced


def test_same_dtype_requests_and_old_schemas_stay_quiet():
    schema = _fitted()
    request = pd.DataFrame({"user_id": [1, 2.0], "age": ["20", 30], "hour": [np.int32(1), 2]})  # numbers all
    _, got = _caught(lambda: schema.transform(request, side="query"))
    assert got == []
    saved = schema.to_dict()
    assert [f.get("value_kind") for f in saved["fields"]] == ["number", None, "number", "number", "string"]
    assert Schema.from_dict(saved) == schema
    for f in saved["fields"]:  # a schema saved before value kinds were recorded: nothing to compare
        f.pop("value_kind", None)
    _, got = _caught(lambda: Schema.from_dict(saved).transform(pd.DataFrame({"hour": ["1"]}), fields=["hour"]))
    assert [w.category for w in got] == [fmrecall.UnseenValueWarning]
    with pytest.raises(ValueError, match="value_kind"):
        Schema.from_dict({"fields": [{**saved["fields"][0], "value_kind": "complex"}]})


def _recaller():
    schema = _schema()
    data = Interactions(USERS, ITEMS, EVENTS, schema, negatives=1)
    model = fmrecall.FM(k=2, epochs=2, threads=1).fit(data)
    return Recaller(model, schema).add_items(ITEMS, "item_id")


def test_recaller_reports_the_last_search_of_each_thread():
    rec = _recaller()
    assert rec.last_unseen == {}
    known = pd.DataFrame({"user_id": [1, 2], "age": [20.0, 30.0], "hour": [1, 2]})
    cold = pd.DataFrame({"user_id": [7, 8, 1], "age": [20.0, 30.0, 40.0], "hour": [1, 9, 9]})
    rec.search(known, k=2)
    assert rec.last_unseen == {"user_id": 0.0, "hour": 0.0}
    with pytest.warns(fmrecall.UnseenValueWarning, match="67% of 'user_id'"):
        rec.search(cold, k=2)
    assert rec.last_unseen == {"user_id": pytest.approx(2 / 3), "hour": pytest.approx(2 / 3)}
    rec.last_unseen["user_id"] = -1.0  # a copy: the caller cannot change what is reported
    assert rec.last_unseen["user_id"] == pytest.approx(2 / 3)

    # per thread: A searches, then B searches other rows, then A reads its own search's rates
    first, second, seen = threading.Barrier(2), threading.Barrier(2), {}

    def worker(name, frame, search_first):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if not search_first:
                first.wait()
            rec.search(frame, k=2)
            if search_first:
                first.wait()
            second.wait()  # both have searched
            seen[name] = rec.last_unseen

    threads = [
        threading.Thread(target=worker, args=("A", known, True)),
        threading.Thread(target=worker, args=("B", cold, False)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen["A"] == {"user_id": 0.0, "hour": 0.0}
    assert seen["B"] == {"user_id": pytest.approx(2 / 3), "hour": pytest.approx(2 / 3)}
