"""A registry of plug-in classes by name, shared by the defenses and the detectors.

:class:`Registry` keeps the classes registered under names (``defense.name``,
``detector.name``), checks what is registered, imports a class a config names
by import path (``my_module:MyDefense``), and gives a live, read-only view of
the names (:class:`Names`). Each plug-in kind wraps it in its own public
functions (:func:`freqlens.defenses.register_defense`,
:func:`freqlens.detectors.register_detector`), whose errors name the kind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

from freqlens._checks import IMPORT_PATH, import_object


class Registry:
    """Classes registered by name, all subclasses of ``base``.

    Args:
        kind: what is registered, for errors (``"defense"``).
        base: the class every registered class subclasses.
        base_path: how errors name ``base`` (``"freqlens.defenses.Defense"``).
    """

    def __init__(self, kind: str, base: type, base_path: str) -> None:
        self.kind, self.base, self.base_path = kind, base, base_path
        self.classes: dict[str, type] = {}
        self.names = Names(self.classes)

    def register(self, name: str, cls: type, *, replace: bool = False) -> type:
        """Make ``cls`` the one called ``name``; returns ``cls``.

        Raises:
            TypeError: ``cls`` is not a subclass of ``base``, or its ``options`` is neither None nor a dataclass.
            ValueError: ``name`` is empty or not a string, or already registered and ``replace`` is False.
        """
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"Expected a non-empty {self.kind} name but got {name!r}.")
        if not (isinstance(cls, type) and issubclass(cls, self.base)):
            raise TypeError(f"Expected a subclass of {self.base_path} for {self.kind} {name!r} but got {cls!r}.")
        options = getattr(cls, "options", None)
        if options is not None and not (isinstance(options, type) and dataclasses.is_dataclass(options)):
            raise TypeError(f"Expected `{cls.__name__}.options` to be a dataclass (or None) but got {options!r}.")
        if name in self.classes and not replace:
            raise ValueError(f"Expected a new {self.kind} name but {name!r} is registered already "
                             f"({self.classes[name].__name__}); pass replace=True to replace it.")
        self.classes[name] = cls
        return cls

    def unregister(self, name: str) -> None:
        """Forget the one called ``name``.

        Raises:
            KeyError: nothing is registered under ``name``.
        """
        if name not in self.classes:
            raise KeyError(f"Expected a registered {self.kind} name, one of {tuple(self.classes)}, but got {name!r}.")
        del self.classes[name]

    def lookup(self, name: str, argument: str) -> type:
        """The class registered as ``name``; a name written ``module:Class`` imports ``module`` (found on
        ``sys.path``, the working directory included) and registers its ``Class`` under that name.

        Raises:
            ValueError: no such class, naming ``argument`` (the config key) and the registered names; a
                ``module:Class`` whose module cannot be imported or that names no subclass of ``base``.
        """
        if isinstance(name, str) and name in self.classes:
            return self.classes[name]
        if isinstance(name, str) and IMPORT_PATH.match(name):
            target = import_object(name, argument)
            if not (isinstance(target, type) and issubclass(target, self.base)):
                raise ValueError(f"Expected `{argument}` {name!r} to name a subclass of {self.base_path} but it "
                                 f"names {target!r}.")
            self.register(name, target)
            return target
        raise ValueError(f"Expected `{argument}` to be one of {tuple(self.classes)} (or `module:Class` naming a "
                         f"{self.base.__name__} subclass) but got {name!r}.")


class Names(Sequence):
    """The registered names, in registration order: a live view (registering one adds it)."""

    def __init__(self, classes: dict[str, type]) -> None:
        self._classes = classes

    def __getitem__(self, index: Any):
        return tuple(self._classes)[index]

    def __len__(self) -> int:
        return len(self._classes)

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._classes))

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def __repr__(self) -> str:
        return repr(tuple(self._classes))

    def __eq__(self, other: object) -> bool:
        return tuple(self) == (tuple(other) if isinstance(other, (tuple, list, Names)) else other)

    __hash__ = None
