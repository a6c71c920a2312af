"""A small generic registry: names to classes or functions.

One `Registry` instance exists per kind of thing (models, encoders, decoders,
losses, optimizers, ...). Built-ins register themselves on import with the
`Registry.register` decorator; third-party packages add models through the Python
entry-point group ``genmnist.models``:

    # pyproject.toml of a plugin package
    [project.entry-points."genmnist.models"]
    my-model = "my_package.models:MyModel"

The entry-point name is the model name; its object must be a subclass of
`genmnist.models.base.GenerativeModel`. Plugins are discovered lazily, the first
time the model registry is queried. Set ``GENMNIST_DISABLE_PLUGINS=1`` to skip them.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from genmnist.errors import RegistryError

T = TypeVar("T")

BUILTIN_SOURCE = "genmnist (built-in)"
ENTRY_POINT_GROUP = "genmnist.models"


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered name: the object, keyword defaults applied by ``create``, and where
    it came from (``genmnist (built-in)`` or the plugin distribution)."""

    name: str
    obj: T
    source: str = BUILTIN_SOURCE
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    @property
    def summary(self) -> str:
        """The registered description, else the first line of the object's docstring."""
        if self.description:
            return self.description
        doc = getattr(self.obj, "__doc__", None) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""


class Registry(Generic[T]):
    """Maps names to objects of one kind.

    Args:
        kind: What is registered, used in messages ("model", "encoder", ...).
        entry_point_group: If given, plugins are loaded from this entry-point group the
            first time the registry is queried.
        validate: Called with each plugin's object; raises ``TypeError`` to reject it.
        builtins: Module (or modules) imported on the first query, whose import registers
            the built-ins (keeps ``import genmnist`` and ``genmnist --help`` light).
    """

    def __init__(
        self,
        kind: str,
        entry_point_group: str | None = None,
        validate: Callable[[Any], None] | None = None,
        builtins: str | tuple[str, ...] | None = None,
    ) -> None:
        self.kind = kind
        self._builtins = (builtins,) if isinstance(builtins, str) else builtins
        self._entries: dict[str, Entry[T]] = {}
        self._broken: dict[str, str] = {}  # name -> why it cannot be used
        self._entry_point_group = entry_point_group
        self._validate = validate
        self._plugins_loaded = entry_point_group is None

    def register(
        self,
        name: str,
        obj: T | None = None,
        *,
        source: str = BUILTIN_SOURCE,
        description: str = "",
        **defaults: Any,
    ) -> Any:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted.

        ``defaults`` are keyword arguments that `create` passes unless overridden,
        which lets one class serve several registered presets; ``description`` is the
        one-line summary shown by ``genmnist list`` (default: the docstring's first line).

        Raises:
            RegistryError: if the name is taken, naming both sources.
        """

        def add(target: T) -> T:
            if name in self._entries:
                taken = self._entries[name]
                raise RegistryError(
                    f"{self.kind} '{name}' is registered twice: by {taken.source} and by {source}"
                )
            self._entries[name] = Entry(name, target, source, dict(defaults), description)
            return target

        return add if obj is None else add(obj)

    def validate_with(self, validate: Callable[[Any], None]) -> None:
        """Check every plugin object (and `check`'s arguments) with ``validate``, which
        raises ``TypeError`` to reject one."""
        self._validate = validate

    def check(self, obj: Any) -> None:
        """Raise ``TypeError`` if ``obj`` is not something this registry may hold."""
        if self._validate is not None:
            self._validate(obj)

    def entry(self, name: str) -> Entry[T]:
        """The `Entry` for ``name``.

        Raises:
            RegistryError: for an unknown name (suggesting close matches) or a name whose
                plugin is broken or clashes with another.
        """
        self._load_plugins()
        if name in self._broken:
            raise RegistryError(self._broken[name])
        try:
            return self._entries[name]
        except KeyError:
            raise RegistryError(self._unknown_message(name)) from None

    def get(self, name: str) -> T:
        """The object registered under ``name``."""
        return self.entry(name).obj

    def create(self, name: str, **overrides: Any) -> Any:
        """Call the object registered under ``name`` with its defaults and ``overrides``."""
        entry = self.entry(name)
        return entry.obj(**{**entry.defaults, **overrides})  # type: ignore[operator]

    def list(self, pattern: str = "*") -> list[str]:
        """Sorted registered names matching a shell-style wildcard ``pattern``."""
        self._load_plugins()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def problems(self) -> dict[str, str]:
        """Names that cannot be used, with the reason (broken or clashing plugins)."""
        self._load_plugins()
        return dict(self._broken)

    @contextmanager
    def isolated(self) -> Iterator[Registry[T]]:
        """Undo, when the block ends, every registration made in it and any plugin
        discovery (for tests, and for code that registers temporary entries)."""
        saved = (dict(self._entries), dict(self._broken), self._plugins_loaded, self._builtins)
        try:
            yield self
        finally:
            self._entries, self._broken = dict(saved[0]), dict(saved[1])
            self._plugins_loaded, self._builtins = saved[2], saved[3]

    def rediscover_plugins(self) -> None:
        """Discover the entry-point plugins again at the next query (after a package was
        installed or removed in a running process); built-ins and manual registrations
        stay."""
        self._entries = {n: e for n, e in self._entries.items() if e.source == BUILTIN_SOURCE}
        self._broken = {}
        self._plugins_loaded = self._entry_point_group is None

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(self._entries[n] for n in self.list())

    def __len__(self) -> int:
        return len(self.list())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self._entries)} entries)"

    def _unknown_message(self, name: str) -> str:
        known = sorted(self._entries)
        # difflib's own cutoff: at 0.5 any name sharing a few letters was "close"
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
        hint = f"did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = f"known: {', '.join(known)}" if known else f"no {self.kind}s are registered"
        return f"unknown {self.kind} '{name}'; " + (hint or listing)

    def _load_plugins(self) -> None:
        if self._builtins is not None:
            modules, self._builtins = self._builtins, None
            for module in modules:
                importlib.import_module(module)
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        if os.environ.get("GENMNIST_DISABLE_PLUGINS", "").strip() not in ("", "0"):
            return
        from importlib.metadata import entry_points

        for ep in entry_points(group=self._entry_point_group):
            self._load_plugin(ep)

    def _load_plugin(self, ep: Any) -> None:
        dist = getattr(ep, "dist", None)
        source = f"plugin '{dist.name} {dist.version}'" if dist else f"plugin '{ep.value}'"
        source += f" (entry point {ep.name} = {ep.value})"
        if ep.name in self._broken:
            self._broken[ep.name] += f" and by {source}"
            return
        if ep.name in self._entries:
            taken = self._entries.pop(ep.name)
            message = (
                f"{self.kind} '{ep.name}' is registered twice: by {taken.source} and by "
                f"{source}; uninstall one of them"
            )
            self._broken[ep.name] = message
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            return
        try:
            obj = ep.load()
            if self._validate is not None:
                self._validate(obj)
        except (Exception, SystemExit) as exc:  # a plugin may fail in any way (even exit)
            message = f"{source} failed to load: {type(exc).__name__}: {exc}"
            self._broken[ep.name] = message
            warnings.warn(message, RuntimeWarning, stacklevel=3)
            return
        self._entries[ep.name] = Entry(ep.name, obj, source)


#: All models, built-in and from plugins (entry-point group ``genmnist.models``). Its
#: validator (every model is a `genmnist.models.base.GenerativeModel` subclass) is set by
#: that module, so this one imports no model code.
MODELS: Registry[Any] = Registry("model", ENTRY_POINT_GROUP, builtins="genmnist.models")
