r"""
Declared keys for ``chanfig`` configs: optional fields, closed and open sections, unknown-key errors.

``RunnerConfig`` and its sections are ``chanfig.Config`` objects.  chanfig stores every annotated
key that has a class default in every instance, which is right for settings whose defaults are
part of a run's record (``checkpoint.interval``) but wrong for settings that should stay absent
until set (``precision``, ``max_grad_norm``, ``ema``): storing them would change every run's
saved config and its identity.  This module adds what chanfig lacks:

- ``Field``: a declared key that is stored only once set.  Reading it unset (as an attribute or
  an item) gives its default and changes nothing.  It carries its type and a description, and
  ``validate()`` checks its value.
- ``Section``: a *closed* section.  Its keys are its annotations and fields; any other key is a
  typo, reported with the closest valid key when it is set, read, or validated::

      unknown key 'intervall' in checkpoint; did you mean 'interval'?

- ``OpenSection``: a section that also takes free-form keys (optimizer arguments, a DeepSpeed
  config, users' own hyperparameters at the top level) while still typing its declared ones.

Keys set through a dotted path (``config["checkpoint.intervall"] = 3``, ``--checkpoint.intervall``
on the command line) reach the section without passing its ``set``; ``validate()``, which runs
when a config is built and after ``parse()``, catches those.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Mapping
from typing import Any, Generic, TypeVar, get_args, overload

import chanfig
from chanfig.utils import Null
from chanfig.utils.annotation import get_cached_annotations

T = TypeVar("T")

_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


class UnknownKeyError(ValueError, KeyError):
    r"""
    A key that a closed config section does not declare (a ``ValueError`` and a ``KeyError``).

    Attributes:
        key: The unknown key.
        section: Dotted path of the section (``"checkpoint"``, ``"parallel.axes"``).
        suggestion: The closest declared key, or ``None``.

    Examples:
        >>> error = UnknownKeyError("intervall", "checkpoint", ["interval", "backend"])
        >>> str(error), error.suggestion
        ("unknown key 'intervall' in checkpoint; did you mean 'interval'?", 'interval')
        >>> str(UnknownKeyError("zzz", "gc", ["interval", "generation"]))
        "unknown key 'zzz' in gc; valid keys are: generation, interval"
    """

    def __init__(self, key: str, section: str, valid: Any) -> None:
        valid = sorted(valid)
        matches = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
        self.key, self.section = key, section
        self.suggestion = matches[0] if matches else None
        where = f" in {section}" if section else ""
        if self.suggestion is not None:
            message = f"unknown key {key!r}{where}; did you mean {self.suggestion!r}?"
        else:
            message = f"unknown key {key!r}{where}; valid keys are: {', '.join(valid)}"
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class Field(Generic[T]):
    r"""
    A declared key that is stored only once set; reading it unset gives ``default``.

    ``kind`` is the type (or tuple of types) a value must have; ``None`` is valid when
    ``optional`` (by default: when the default is ``None``); an ``int`` is valid where a
    ``float`` is; ``bool`` is never taken for a number; ``kind=None`` accepts anything.  ``coerce`` optionally converts an assigned value
    (used to turn a mapping into a section).  Strings such as ``"false"`` from the command line
    become booleans for ``bool`` fields.

    Examples:
        >>> class Demo(OpenSection):
        ...     scale = Field(None, float, doc="A factor.")
        >>> demo = Demo()
        >>> demo.scale, "scale" in demo, demo.dict()
        (None, False, {})
        >>> demo.scale = 2
        >>> demo.scale, demo.dict()
        (2, {'scale': 2})
        >>> Demo(scale="big")
        Traceback (most recent call last):
        TypeError: scale must be float or None, got 'big'
    """

    def __init__(
        self,
        default: T,
        kind: type | tuple[type, ...] | None = None,
        *,
        doc: str,
        optional: bool | None = None,
        coerce: Any = None,
    ) -> None:
        self.default = default
        self.optional = default is None if optional is None else optional
        kinds = () if kind is None else kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and int not in kinds:
            kinds = (*kinds, int)
        self.kinds: tuple[type, ...] = kinds
        self.doc = doc
        self.coerce = coerce
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, instance: None, owner: type) -> Field[T]: ...

    @overload
    def __get__(self, instance: object, owner: type) -> T: ...

    def __get__(self, instance: object | None, owner: type) -> Any:
        # A non-data descriptor: once the key is set, chanfig mirrors it into the instance
        # ``__dict__``, which takes precedence, so this only runs while the key is unset.
        if instance is None:
            return self
        return self.default

    def convert(self, value: Any) -> Any:
        """``value`` as stored: ``coerce`` applied, boolean spellings turned into ``bool``."""
        if self.coerce is not None:
            return self.coerce(value)
        if bool in self.kinds and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
        return value

    def check(self, value: Any, path: str) -> None:
        """Raise ``TypeError`` naming ``path`` when ``value`` is not of this field's kind."""
        if not self.kinds or (value is None and self.optional):
            return
        if isinstance(value, bool) and bool not in self.kinds:
            valid = False
        else:
            valid = isinstance(value, self.kinds)
        if not valid:
            names = " or ".join(kind.__name__ for kind in self.kinds if not (kind is int and float in self.kinds))
            optional = " or None" if self.optional else ""
            raise TypeError(f"{path} must be {names}{optional}, got {value!r}")

    def __repr__(self) -> str:
        return f"Field(default={self.default!r}, name={self.name!r})"


class _Schema:
    """What a config class declares, computed once per class."""

    def __init__(self, cls: type) -> None:
        self.fields: dict[str, Field] = {}
        for klass in reversed(cls.__mro__):
            self.fields.update({name: value for name, value in vars(klass).items() if isinstance(value, Field)})
        annotations: dict[str, Any] = {}
        for klass in reversed(cls.__mro__):
            if issubclass(klass, Section):
                annotations.update(get_cached_annotations(klass, copy=False))
        self.declared = frozenset(self.fields) | frozenset(annotations)
        #: Keys annotated with a section class (or ``Section | None``): a mapping assigned there
        #: becomes that section.
        self.sections: dict[str, type[Section]] = {}
        for key, annotation in annotations.items():
            kinds = [kind for kind in (get_args(annotation) or (annotation,)) if kind is not type(None)]
            if len(kinds) == 1 and isinstance(kinds[0], type) and issubclass(kinds[0], Section):
                self.sections[key] = kinds[0]


_SCHEMAS: dict[type, _Schema] = {}


def _schema(cls: type) -> _Schema:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        schema = _SCHEMAS[cls] = _Schema(cls)
    return schema


def fields(cls: type) -> dict[str, Field]:
    r"""
    The ``Field``\ s a config class declares, its bases' included: ``{name: field}``.

    Examples:
        >>> class Demo(OpenSection):
        ...     scale = Field(1.0, float, doc="A factor.")
        >>> list(fields(Demo))
        ['scale']
    """
    return _schema(cls).fields


def declared_keys(cls: type) -> frozenset[str]:
    r"""
    Every key a config class declares: annotated keys and ``Field``\ s, its bases' included.

    Examples:
        >>> class Demo(Section):
        ...     size: int = 1
        ...     scale = Field(None, float, doc="A factor.")
        >>> sorted(declared_keys(Demo))
        ['scale', 'size']
    """
    return _schema(cls).declared


class Section(chanfig.Config):
    r"""
    A closed config section: only its annotated keys and ``Field``\ s are valid.

    Subclasses set ``_path_`` to the section's dotted place in ``RunnerConfig`` (used in error
    messages).  A subclass that sets ``_split_overrides_ = True`` also accepts, under any other
    key, a mapping of its own keys (``dataloader.train = {"shuffle": False}``).

    Examples:
        >>> class LimitsConfig(Section):
        ...     _path_ = "limits"
        ...     interval: int = 1
        >>> config = LimitsConfig()
        >>> config.intervall = 3
        Traceback (most recent call last):
        danling.runners.config_fields.UnknownKeyError: unknown key 'intervall' in limits; did you mean 'interval'?
        >>> config.intervl
        Traceback (most recent call last):
        AttributeError: 'LimitsConfig' object has no attribute unknown key 'intervl' in limits; did you mean 'interval'?
    """

    _path_ = ""
    _closed_ = True
    _split_overrides_ = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # chanfig reads only a class's own annotations, so a subclass that declares keys of its
        # own would lose its bases' types (and with them typed sections).  Give it all of them.
        super().__init_subclass__(**kwargs)
        inherited: dict[str, Any] = {}
        for base in reversed(cls.__mro__[1:]):
            if issubclass(base, Section):
                inherited.update(get_cached_annotations(base, copy=False))
        if inherited:
            cls.__annotations__ = {**inherited, **inspect.get_annotations(cls)}

    def _path(self, key: str) -> str:
        return f"{self._path_}.{key}" if self._path_ else key

    def _is_known(self, key: str, value: Any = None) -> bool:
        if not self._closed_ or key in _schema(type(self)).declared:
            return True
        return self._split_overrides_ and isinstance(value, Mapping)

    def _unknown(self, key: str) -> UnknownKeyError:
        return UnknownKeyError(key, self._path_, _schema(type(self)).declared)

    def set(self, name: Any, value: Any, convert_mapping: bool | None = None) -> None:
        if isinstance(name, str) and "." not in name:  # a dotted name's first key goes through ``__missing__``
            value = self._convert(name, value)
        super().set(name, value, convert_mapping)

    def _convert(self, key: str, value: Any) -> Any:
        schema = _schema(type(self))
        field = schema.fields.get(key)
        if field is not None:
            return field.convert(value)
        section = schema.sections.get(key)
        if section is not None and isinstance(value, Mapping) and not isinstance(value, section):
            return section(value)  # here rather than in chanfig, which would hide the section's errors
        if not self._is_known(key, value):
            raise self._unknown(key)
        return value

    def __missing__(self, name: Any, default: Any = Null) -> Any:
        # Reading an unset key.  A field gives its default without storing it; a closed
        # section refuses a key it does not declare instead of creating an empty one.
        if isinstance(name, str) and not (name.startswith("__") and name.endswith("__")):
            field = _schema(type(self)).fields.get(name)
            if default is not Null:
                default = self._convert(name, default)
            elif field is not None:
                return field.default
            elif not self._is_known(name, {}):
                raise self._unknown(name)
        return super().__missing__(name, default)

    def validate(self) -> None:
        """
        Check values: unknown keys, ``Field`` types, chanfig's annotation types, then nested sections.

        String booleans in ``bool`` fields (from the command line) become ``bool`` first.
        """
        schema = _schema(type(self))
        for key, value in list(self.items()):
            field = schema.fields.get(key)
            if field is not None:
                converted = field.convert(value)
                if converted is not value:
                    super().set(key, converted)
                field.check(converted, self._path(key))
            elif key in schema.sections and isinstance(value, Mapping) and not isinstance(value, Section):
                super().set(key, schema.sections[key](value))  # reached through a dotted path
            elif not self._is_known(key, value):
                raise self._unknown(key)
            elif self._split_overrides_ and key not in schema.declared and isinstance(value, Mapping):
                _check_override(self, key, value)
        # chanfig's ``validate`` would walk the whole subtree, and each nested section walks its
        # own again; check this level's annotations, then let each child check itself once.
        self._validate(self)
        for value in self.values():
            if isinstance(value, chanfig.NestedDict):
                value.validate()


def _check_override(section: Section, split: str, override: Mapping) -> None:
    schema = _schema(type(section))
    path = section._path(split)
    for key, value in override.items():
        field = schema.fields.get(key)
        if field is None and key not in schema.declared:
            raise UnknownKeyError(key, path, schema.declared)
        if field is not None:
            field.check(field.convert(value), f"{path}.{key}")


def is_declared_path(cls: type, path: str, *, nested: bool = False) -> bool:
    r"""
    Whether the dotted ``path`` is a key ``cls`` declares, or sits in an open section it declares.

    Examples:
        >>> from danling.runners.config import RunnerConfig
        >>> paths = ("sched.interval", "optim.eps", "checkpoint.intervall", "epoch")
        >>> [is_declared_path(RunnerConfig, path) for path in paths]
        [True, True, False, False]
    """
    key, _, rest = path.partition(".")
    schema = _schema(cls)
    if key not in schema.declared:  # free-form keys count inside an open section, not at the top
        return nested and not (issubclass(cls, Section) and cls._closed_)
    section = schema.sections.get(key)
    if not rest or section is None:
        return True
    return is_declared_path(section, rest, nested=True)


def check_known_keys(config: Mapping, path: str) -> None:
    r"""
    Raise ``UnknownKeyError`` for a key of ``config`` that its class does not declare.

    For ``chanfig.Config`` sections defined elsewhere as plain classes with annotations (a
    ``Section`` checks itself).

    Examples:
        >>> class DecayConfig(chanfig.Config):
        ...     decay: float = 0.9
        >>> check_known_keys(DecayConfig(decay=0.5), "ema")
        >>> check_known_keys(DecayConfig(decy=0.5), "ema")
        Traceback (most recent call last):
        danling.runners.config_fields.UnknownKeyError: unknown key 'decy' in ema; did you mean 'decay'?
    """
    declared = {name for klass in type(config).__mro__ for name in get_cached_annotations(klass, copy=False)}
    declared.update(fields(type(config)))
    for key in config:
        if key not in declared:
            raise UnknownKeyError(key, path, declared)


class OpenSection(Section):
    r"""
    A section that takes any key; its annotated keys and ``Field``\ s are still typed.

    Examples:
        >>> class OptionsConfig(OpenSection):
        ...     lr = Field(None, float, doc="Learning rate.")
        >>> config = OptionsConfig(lr=0.1, momentum=0.9)
        >>> config.lr, config.momentum, config.dict()
        (0.1, 0.9, {'lr': 0.1, 'momentum': 0.9})
    """

    _closed_ = False


__all__ = [
    "Field",
    "OpenSection",
    "Section",
    "UnknownKeyError",
    "check_known_keys",
    "declared_keys",
    "fields",
    "is_declared_path",
]
