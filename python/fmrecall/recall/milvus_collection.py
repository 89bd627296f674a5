"""The collection behind a MilvusIndex: created with fmrecall's two fields, or checked to be one."""

from __future__ import annotations

from typing import Any

from .milvus_support import _PARAMS, ID_FIELD, VECTOR_FIELD, _pymilvus


def create_collection(index: Any, client: Any) -> None:
    """Create the index's collection: INT64 primary key, FLOAT_VECTOR of its dimension, its ANN index."""
    DataType = _pymilvus().DataType
    schema = client.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=index.dim)
    index_params = client.prepare_index_params()
    build = {k: v for k, v in index.params.items() if _PARAMS[index.index_type][k][2] == "build"}
    if index.lite and build:
        # pymilvus sends build parameters as separate keys; Milvus Lite reads only a JSON "params"
        # key (the older wire format) and would silently build with its defaults
        build = {**build, "params": dict(build)}
    index_params.add_index(field_name=VECTOR_FIELD, index_type=index.index_type, metric_type=index.metric, params=build)
    client.create_collection(index.collection, schema=schema, index_params=index_params, consistency_level="Strong")


def check_collection(index: Any, client: Any) -> None:
    """The existing collection has our two fields, our dimension and our index type / metric."""
    name = index.collection
    desc = client.describe_collection(name)
    DataType = _pymilvus().DataType
    fields = {f["name"]: f for f in desc.get("fields", [])}
    pk = fields.get(ID_FIELD)
    vec = fields.get(VECTOR_FIELD)
    if (
        set(fields) != {ID_FIELD, VECTOR_FIELD}
        or pk is None
        or vec is None
        or not pk.get("is_primary")
        or pk.get("type") != DataType.INT64
        or vec.get("type") != DataType.FLOAT_VECTOR
    ):
        got = ", ".join(f"{n} {getattr(f.get('type'), 'name', f.get('type'))}" for n, f in fields.items())
        raise ValueError(
            f"Milvus collection {name!r} is not an fmrecall item collection: it has fields ({got}), "
            f"expected {ID_FIELD} INT64 primary key and {VECTOR_FIELD} FLOAT_VECTOR"
        )
    if desc.get("auto_id"):
        raise ValueError(f"Milvus collection {name!r} generates its ids (auto_id); fmrecall gives item ids")
    have = int(vec.get("params", {}).get("dim", -1))
    if have != index.dim:
        raise ValueError(
            f"Milvus collection {name!r} holds vectors of dimension {have}, this Recaller's "
            f"vectors have dimension {index.dim} (another model or sides?)"
        )
    indexes = client.list_indexes(name, field_name=VECTOR_FIELD)
    if not indexes:
        raise ValueError(f"Milvus collection {name!r} has no index on {VECTOR_FIELD!r}")
    info = client.describe_index(name, indexes[0]) or {}
    if info.get("index_type") != index.index_type or info.get("metric_type") != index.metric:
        raise ValueError(
            f"Milvus collection {name!r} has a {info.get('index_type')} index with metric "
            f"{info.get('metric_type')}, expected {index.index_type} with {index.metric}"
        )
    for key, value in index.params.items():  # build parameters, where the server reports them
        if _PARAMS[index.index_type][key][2] == "build" and key in info and int(info[key]) != value:
            raise ValueError(f"Milvus collection {name!r} was built with {key}={info[key]}, params say {value}")
