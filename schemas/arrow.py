"""Derive pyarrow schemas from pydantic models, so every record has one definition."""

from __future__ import annotations

import datetime as dt
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

import pyarrow as pa
from pydantic import BaseModel

_SCALARS: dict[type, pa.DataType] = {
    str: pa.string(),
    int: pa.int64(),
    float: pa.float64(),
    bool: pa.bool_(),
    bytes: pa.binary(),
    dt.datetime: pa.timestamp("us", tz="UTC"),
}


def _unwrap_optional(annotation: Any) -> tuple[Any, bool]:
    origin = get_origin(annotation)
    if origin is Union or origin is types.UnionType:
        args = [a for a in get_args(annotation) if a is not type(None)]
        if len(args) != len(get_args(annotation)):
            if len(args) != 1:
                raise TypeError(f"only Optional[X] unions map to Arrow, got {annotation!r}")
            return args[0], True
        raise TypeError(f"only Optional[X] unions map to Arrow, got {annotation!r}")
    return annotation, False


def arrow_type(annotation: Any) -> tuple[pa.DataType, bool]:
    """Return (arrow type, nullable) for one pydantic field annotation."""
    annotation, nullable = _unwrap_optional(annotation)
    # Annotated[X, ...] -> X
    if get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
        inner, inner_nullable = arrow_type(annotation)
        return inner, nullable or inner_nullable
    origin = get_origin(annotation)
    if origin is Literal:
        values = get_args(annotation)
        kinds = {type(v) for v in values}
        if len(kinds) != 1:
            raise TypeError(f"Literal with mixed value types cannot map to Arrow: {annotation!r}")
        return _SCALARS[kinds.pop()], nullable
    if origin in (list, tuple) or annotation in (list, tuple):
        args = get_args(annotation)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            raise TypeError(f"only tuple[X, ...] maps to Arrow, got {annotation!r}")
        item_type, item_nullable = arrow_type(args[0])
        return pa.list_(pa.field("element", item_type, nullable=item_nullable)), nullable
    if origin is dict:
        # A list of key/value structs rather than an Arrow map: HF datasets, polars and
        # Parquet round trips all handle it the same way.
        key, value = get_args(annotation)
        key_type, _ = arrow_type(key)
        value_type, value_nullable = arrow_type(value)
        entry = pa.struct([pa.field("key", key_type, nullable=False),
                           pa.field("value", value_type, nullable=value_nullable)])
        return pa.list_(pa.field("element", entry, nullable=False)), nullable
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct(model_fields(annotation)), nullable
    if annotation in _SCALARS:
        return _SCALARS[annotation], nullable
    raise TypeError(f"no Arrow mapping for field type {annotation!r}")


def model_fields(model: type[BaseModel]) -> list[pa.Field]:
    fields = []
    for name, info in model.model_fields.items():
        if info.exclude:
            continue
        typ, nullable = arrow_type(info.annotation)
        metadata = {"description": info.description} if info.description else None
        fields.append(pa.field(name, typ, nullable=nullable, metadata=metadata))
    return fields


def model_schema(model: type[BaseModel]) -> pa.Schema:
    """The Arrow schema of a record model, with its description stored in the metadata."""
    description = (model.__doc__ or "").strip()
    metadata = {
        "fret.record": model.__name__,
        "fret.description": description,
        "fret.schema_version": str(getattr(model, "SCHEMA_VERSION", 1)),
    }
    return pa.schema(model_fields(model), metadata={k: v.encode() for k, v in metadata.items()})


def _strip(annotation: Any) -> Any:
    annotation, _ = _unwrap_optional(annotation)
    if get_origin(annotation) is typing.Annotated:
        annotation = get_args(annotation)[0]
    return annotation


def _convert(annotation: Any, value: Any, to_arrow: bool) -> Any:
    """Walk a value by its annotation, turning dict fields into key/value entries (to_arrow)
    or back; everything else passes through."""
    if value is None:
        return None
    annotation = _strip(annotation)
    origin = get_origin(annotation)
    if origin is dict:
        _, value_ann = get_args(annotation)
        if to_arrow:
            return [{"key": k, "value": _convert(value_ann, v, to_arrow)} for k, v in value.items()]
        return {e["key"]: _convert(value_ann, e["value"], to_arrow) for e in value}
    if origin in (list, tuple):
        item_ann = get_args(annotation)[0]
        return [_convert(item_ann, v, to_arrow) for v in value]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {name: _convert(info.annotation, value.get(name), to_arrow)
                for name, info in annotation.model_fields.items() if not info.exclude and name in value}
    return value


def to_row(record: BaseModel) -> dict[str, Any]:
    """One record as a row of its Arrow schema."""
    return _convert(type(record), record.model_dump(mode="python"), to_arrow=True)


def from_row(model: type[BaseModel], row: dict[str, Any]) -> BaseModel:
    return model.model_validate(_convert(model, row, to_arrow=False))


def rows_to_table(model: type[BaseModel], records: list[BaseModel]) -> pa.Table:
    return pa.Table.from_pylist([to_row(r) for r in records], schema=model_schema(model))


def table_to_records(model: type[BaseModel], table: pa.Table) -> list[BaseModel]:
    return [from_row(model, row) for row in table.to_pylist()]


def schema_description(schema: pa.Schema) -> dict[str, str]:
    meta = schema.metadata or {}
    return {k.decode(): v.decode() for k, v in meta.items() if k.startswith(b"fret.")}
