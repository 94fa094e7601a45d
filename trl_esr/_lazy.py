"""Lazy package exports (PEP 562), shared by `trl_esr` and `trl_esr.diagnostics`.

`trl-esr --help` and `import trl_esr` must not pay for torch, transformers, TRL or the diagnostics: a package lists
its public names and the submodule holding each, and a name's submodule is imported only when the name is first read.
"""

import importlib


def lazy_exports(package: str, namespace: dict, names: dict[str, str]):
    """A module's `__getattr__` and `__dir__` that import each of `names` (public name: relative submodule) on first
    access from `package` and cache it in `namespace` (the package's `globals()`), so later lookups skip the hook.

    Usage, in a package's `__init__.py`: `__getattr__, __dir__ = lazy_exports(__name__, globals(), {...})`.
    """

    def __getattr__(name: str):
        if name not in names:  # AttributeError lets `from package import submodule` fall back to importing it
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name], package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted({*namespace, *names})

    return __getattr__, __dir__
