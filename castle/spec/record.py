"""The layer zones.toml's models stand on: frozen records that pydantic's validator core fills.

castle validates a spec with pydantic_core, pydantic's own validator, from schemas built
here, rather than through `BaseModel`: importing BaseModel's machinery and building a dozen
model classes cost more than everything else a `castle generate` does. A record class lists
its fields with `field()`; the schemas are built on first use, one validator per class.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

from pydantic_core import SchemaValidator, ValidationError

__all__ = ["Record", "Type", "ValidationError", "field", "json_schema"]

Schema = dict[str, Any]  # a pydantic_core core schema, or a JSON Schema
R = TypeVar("R", bound="Record")
_MISSING: Any = object()


class Type:
    """One value type: its core schema, its JSON Schema, and the records it holds."""

    __slots__ = ("core", "json", "records")

    def __init__(self, core: Schema, json: Schema, records: tuple[type[Record], ...] = ()) -> None:
        self.core, self.json, self.records = core, json, records


def _fn(kind: str, func: Callable[[Any], Any], inner: Type, json: Schema | None) -> Type:
    core = {"type": kind, "function": {"type": "no-info", "function": func},
            "schema": inner.core}
    return Type(core, inner.json if json is None else json, inner.records)


def before(func: Callable[[Any], Any], inner: Type, json: Schema | None = None) -> Type:
    """`func` runs on the raw value first (it may convert it), then `inner` checks it."""
    return _fn("function-before", func, inner, json)


def after(func: Callable[[Any], Any], inner: Type, json: Schema | None = None) -> Type:
    """`inner` checks the value, then `func` (raises ValueError to refuse it)."""
    return _fn("function-after", func, inner, json)


class _Deferred:
    """A type's own validation, built the first time a value needs it."""

    __slots__ = ("core", "validator")

    def __init__(self, core: Schema) -> None:
        self.core: Schema = core
        self.validator: SchemaValidator | None = None

    def __call__(self, value: Any) -> Any:
        if self.validator is None:
            self.validator = SchemaValidator(self.core)
        return self.validator.validate_python(value)


def checker(inner: Type) -> Callable[[Any], Any]:
    """`inner`'s validation as a function, for the values a plain() function does not answer
    itself: what it raises is reported as inner's own errors, at the field's place."""
    return _Deferred(inner.core)


def plain(func: Callable[[Any], Any], json: Schema) -> Type:
    """`func` alone turns the raw value into the field's value (or raises)."""
    return Type({"type": "function-plain", "function": {"type": "no-info", "function": func}},
                json)


def instance(cls: type) -> Type:
    """An object a before-function already made (a PortRange from "80/tcp")."""
    return Type({"type": "is-instance", "cls": cls}, {})


def strict_int(ge: int | None = None, le: int | None = None) -> Type:
    """An integer, never a bool or a float; within [ge, le]."""
    core: Schema = {"type": "int", "strict": True}
    json: Schema = {"type": "integer"}
    for key, value in (("ge", ge), ("le", le)):
        if value is not None:
            core[key] = value
            json["minimum" if key == "ge" else "maximum"] = value
    return Type(core, json)


def literal(*values: Any) -> Type:
    """One of `values`."""
    return Type({"type": "literal", "expected": list(values)}, {"enum": list(values)})


def nullable(inner: Type) -> Type:
    """`inner` or None (TOML cannot write None: only a default is)."""
    return Type({"type": "nullable", "schema": inner.core}, inner.json, inner.records)


def list_of(item: Type) -> Type:
    """A list of `item`."""
    return Type({"type": "list", "items_schema": item.core},
                {"type": "array", "items": item.json}, item.records)


def dict_of(key: Type, value: Type) -> Type:
    """A table of `key` -> `value`."""
    json: Schema = {"type": "object", "additionalProperties": value.json}
    if key.json.get("pattern"):
        json["propertyNames"] = {"pattern": key.json["pattern"]}
    return Type({"type": "dict", "keys_schema": key.core, "values_schema": value.core}, json,
                value.records)


def union(*members: Type) -> Type:
    """The first of `members` that fits (pydantic's smart union)."""
    return Type({"type": "union", "choices": [m.core for m in members]},
                {"anyOf": [m.json for m in members]})


STR = Type({"type": "str"}, {"type": "string"})
STRICT_BOOL = Type({"type": "bool", "strict": True}, {"type": "boolean"})
ANY = Type({"type": "any"}, {})
TABLE = dict_of(STR, ANY)


def record(cls: type[Record]) -> Type:
    """A nested record: a table with the record's fields."""
    return Type(cls.core_schema(), {"$ref": f"#/$defs/{cls.__name__}"}, (cls,))


class Field:
    """One field of a record: its type, what it means, and its default."""

    __slots__ = ("alias", "default", "description", "factory", "json", "type")

    def __init__(self, type_: Type, description: str, default: Any, factory: Any,
                 alias: str | None, json: Schema | None) -> None:
        self.type, self.description, self.default = type_, description, default
        self.factory, self.alias, self.json = factory, alias, json

    def initial(self) -> Any:
        """The value a record holds when the table leaves this field out."""
        return self.factory() if self.factory is not None else self.default


def field(type_: Type, description: str, *, default: Any = _MISSING,
          factory: Callable[[], Any] | None = None, alias: str | None = None,
          json: Schema | None = None) -> Any:
    """Declare a record field (typed Any so that `name: str = field(...)` checks)."""
    return Field(type_, description, default, factory, alias, json)


class Record:
    """A frozen record: fields as attributes, equal when type and fields are equal."""

    __slots__ = ("__dict__", "__pydantic_extra__", "__pydantic_fields_set__",
                 "__pydantic_private__")
    __pydantic_fields_set__: set[str]  # set by pydantic_core, as on a BaseModel
    fields: ClassVar[dict[str, Field]] = {}
    _core: ClassVar[Schema | None] = None
    _validator: ClassVar[SchemaValidator | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = {k: v for k, v in vars(cls).items() if isinstance(v, Field)}
        for name in own:
            delattr(cls, name)  # the instance's value, never the declaration, is read
        cls.fields = {**cls.fields, **own}
        cls._core = None
        cls._validator = None

    @classmethod
    def core_schema(cls) -> Schema:
        """The pydantic_core schema of this record (built once)."""
        if cls._core is None:
            fields = {}
            for name, f in cls.fields.items():
                schema = f.type.core
                if f.factory is not None:
                    schema = {"type": "default", "schema": schema, "default_factory": f.factory}
                elif f.default is not _MISSING:
                    schema = {"type": "default", "schema": schema, "default": f.default}
                entry: Schema = {"type": "model-field", "schema": schema}
                if f.alias:
                    entry["validation_alias"] = f.alias
                fields[name] = entry
            cls._core = {
                "type": "model", "cls": cls,
                "schema": {"type": "model-fields", "fields": fields, "model_name": cls.__name__,
                           "extra_behavior": "forbid"},
                # by name as well as by alias (`from_` and `from`): pydantic_core before
                # 2.30 (pydantic 2.6-2.10, which pyproject allows) reads populate_by_name
                "config": {"title": cls.__name__, "extra_fields_behavior": "forbid",
                           "validate_by_alias": True, "validate_by_name": True,
                           "populate_by_name": True},
            }
        return cls._core

    @classmethod
    def model_validate(cls: type[R], data: Any) -> R:
        """A record from a table; raises pydantic_core's ValidationError listing every error."""
        if cls._validator is None:
            cls._validator = SchemaValidator(cls.core_schema())
        result: R = cls._validator.validate_python(data)
        return result

    @classmethod
    def default(cls: type[R]) -> R:
        """The record an absent table stands for: every field at its default."""
        return cls._make({name: f.initial() for name, f in cls.fields.items()}, set())

    @classmethod
    def _make(cls: type[R], values: dict[str, Any], given: set[str]) -> R:
        new = object.__new__(cls)
        new.__setstate__((values, given))
        return new

    def model_copy(self: R, *, update: dict[str, Any] | None = None) -> R:
        """A copy with some fields replaced (not validated: the values must be valid)."""
        changed = update or {}
        return self._make({**self.__dict__, **changed},
                          set(self.__pydantic_fields_set__) | set(changed))

    def __getstate__(self) -> tuple[dict[str, Any], set[str]]:
        return self.__dict__, self.__pydantic_fields_set__

    def __setstate__(self, state: tuple[dict[str, Any], set[str]]) -> None:
        # copy, deepcopy and pickle fill a new record here: its __setattr__ refuses
        values, given = state
        for name, value in (("__dict__", dict(values)), ("__pydantic_fields_set__", set(given)),
                            ("__pydantic_extra__", None), ("__pydantic_private__", None)):
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.__dict__ == other.__dict__

    def __hash__(self) -> int:
        return hash((type(self), *self.__dict__.values()))

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items())
        return f"{type(self).__name__}({body})"


def _json_default(value: Any) -> Any:
    """A default as JSON writes it, or _MISSING when it has no JSON form."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        items = [_json_default(v) for v in value]
        return _MISSING if any(i is _MISSING for i in items) else items
    if isinstance(value, dict):
        pairs = {str(k): _json_default(v) for k, v in value.items()}
        return _MISSING if any(v is _MISSING for v in pairs.values()) else pairs
    if isinstance(value, Record):
        return _MISSING
    return str(value)  # an address or a network: its text


def _object(cls: type[Record]) -> Schema:
    properties: Schema = {}
    required = []
    for name, f in cls.fields.items():
        key = f.alias or name
        prop = {**f.type.json, **(f.json or {}), "description": f.description}
        if f.default is _MISSING and f.factory is None:
            required.append(key)
        else:
            shown = _json_default(f.initial())
            if shown is not _MISSING and shown is not None:
                prop["default"] = shown
        properties[key] = prop
    schema: Schema = {"type": "object", "title": cls.__name__, "properties": properties,
                      "additionalProperties": False}
    if cls.__doc__:
        schema["description"] = cls.__doc__.strip()
    if required:
        schema["required"] = required
    return schema


def json_schema(root: type[Record]) -> Schema:
    """The JSON Schema of a record and every record it holds (under $defs)."""
    defs: dict[str, Schema] = {}
    todo = [r for f in root.fields.values() for r in f.type.records]
    while todo:
        cls = todo.pop()
        if cls.__name__ not in defs:
            defs[cls.__name__] = _object(cls)
            todo += [r for f in cls.fields.values() for r in f.type.records]
    schema = _object(root)
    if defs:
        schema["$defs"] = defs
    return schema
