"""fmrecall.Sides: which side (user / context / item) every field is on, and its validation."""

from __future__ import annotations

import numpy as np
import pytest

import fmrecall


def test_sides_basics():
    s = fmrecall.Sides(user=[3, 0], context=[5], item=[4, 1, 2])
    assert tuple(s.query) == (3, 0, 5)  # user then context, in the given order
    assert tuple(s.item) == (4, 1, 2)
    assert tuple(s.user) == (3, 0) and tuple(s.context) == (5,)
    s.check(6)  # every field 0..5 assigned once: no error
    mask = s.item_mask(6)
    assert mask.dtype == np.uint8
    np.testing.assert_array_equal(mask, [0, 1, 1, 0, 1, 0])


def test_sides_without_user_or_context():
    no_ctx = fmrecall.Sides(user=[0, 2], item=[1])
    assert tuple(no_ctx.query) == (0, 2) and tuple(no_ctx.context) == ()
    np.testing.assert_array_equal(no_ctx.item_mask(3), [0, 1, 0])
    no_user = fmrecall.Sides(context=[1], item=[0])
    assert tuple(no_user.query) == (1,) and tuple(no_user.user) == ()
    np.testing.assert_array_equal(no_user.item_mask(2), [1, 0])


def test_numpy_integers_are_field_indices():
    s = fmrecall.Sides(user=np.array([0]), context=[np.int32(2)], item=np.arange(1, 2))
    assert s == fmrecall.Sides(user=[0], context=[2], item=[1])
    np.testing.assert_array_equal(s.item_mask(3), [0, 1, 0])


def test_to_dict_from_dict_and_equality():
    s = fmrecall.Sides(user=[3, 0], context=[5], item=[4, 1, 2])
    d = s.to_dict()
    assert d == {"user": [3, 0], "context": [5], "item": [4, 1, 2]}
    import json

    back = fmrecall.Sides.from_dict(json.loads(json.dumps(d)))  # survives JSON (the model file)
    assert back == s and not (back != s)
    assert fmrecall.Sides.from_dict({"user": [0], "item": [1]}) == fmrecall.Sides(user=[0], item=[1])
    # a field moved between user and context, or between query and item, is a different Sides
    assert s != fmrecall.Sides(user=[3], context=[0, 5], item=[4, 1, 2])
    assert s != fmrecall.Sides(user=[3, 0, 5], item=[4, 1, 2])
    assert s != fmrecall.Sides(user=[3, 0, 2], context=[5], item=[4, 1])
    assert s != {"user": [3, 0], "context": [5], "item": [4, 1, 2]}


@pytest.mark.parametrize(
    "kw, name",
    [
        (dict(user=[0, 1], item=[1]), "1"),
        (dict(user=[0], context=[2, 0], item=[1]), "0"),
        (dict(user=[0], context=[2], item=[3, 2]), "2"),
    ],
    ids=["user-item", "user-context", "context-item"],
)
def test_field_in_two_sides_raises_at_construction(kw, name):
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        fmrecall.Sides(**kw)


def test_check_names_unassigned_fields():
    s = fmrecall.Sides(user=[0], context=[4], item=[1])
    with pytest.raises(ValueError) as e:
        s.check(6)
    msg = str(e.value)
    for f in ("2", "3", "5"):
        assert f in msg, msg
    with pytest.raises(ValueError, match=r"\b2\b"):
        s.item_mask(6)


def test_check_names_fields_out_of_range():
    s = fmrecall.Sides(user=[0], context=[7], item=[1, 2])
    with pytest.raises(ValueError, match=r"\b7\b"):
        s.check(3)
    with pytest.raises(ValueError, match=r"\b7\b"):
        s.item_mask(3)
    with pytest.raises(ValueError, match=r"\b3\b"):  # with 8 fields, 3..6 are unassigned
        s.check(8)


@pytest.mark.parametrize("kw", [dict(user=[0, 1]), dict(item=[0, 1]), dict()], ids=["no-item", "no-query", "empty"])
def test_a_split_needs_both_sides(kw):
    """A Sides without item fields, or without query fields, cannot describe a split (it may be
    refused when built or when used)."""
    w = {"bias": 0.0, "linear": np.zeros(4, np.float32), "factors": np.zeros((4, 2), np.float32)}
    model = fmrecall.FM.from_weights(w, n_fields=2)
    with pytest.raises(ValueError):
        model.split(fmrecall.Sides(**kw))


@pytest.mark.parametrize("bad", [1.5, None, [0]], ids=["float", "None", "list"])
def test_non_index_fields_raise(bad):
    with pytest.raises((ValueError, TypeError)):
        fmrecall.Sides(user=[bad], item=[1]).check(2)
