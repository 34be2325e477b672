"""Every public function, class, method and property of the public API has a docstring (issue 16).

The API is what the README and the package documentation name: ``rafs`` itself (``open``, ``Image``,
``ImageFile``, ``Stat``, ``Builder``, the errors), :mod:`rafs.model`, :mod:`rafs.errors`,
:mod:`rafs.display`, :mod:`rafs.tables`, :mod:`rafs.testing` (and its modules), :mod:`rafs.fsspec`,
:mod:`rafs.progress`, and the converter of :mod:`rafs.oci`. Objects are walked with :mod:`inspect`;
what a class inherits from outside rafs (``object``, ``Exception``, fsspec's ``AbstractFileSystem``) is
the other library's to document.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil


import rafs

MODULES = ["rafs", "rafs.image", "rafs.builder.builder", "rafs.model", "rafs.errors", "rafs.display", "rafs.tables",
           "rafs.fsspec", "rafs.progress", "rafs.oci", "rafs.oci.convert", "rafs.image.unpack"]
MODULES += ["rafs.testing"] + [f"rafs.testing.{m.name}" for m in pkgutil.iter_modules(
    importlib.import_module("rafs.testing").__path__) if not m.name.startswith("_")]
# Names the top-level package exports from other modules (resolved lazily)
TOP_LEVEL = ["open", "mount_erofs", "Image", "ImageFile", "Stat", "Builder"]


def _own_public(module):
    """(qualified name, object) of the public functions and classes ``module`` defines or exports."""
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    for name in names:
        obj = getattr(module, name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if getattr(obj, "__module__", "").split(".")[0] != "rafs":
            continue
        if module.__name__ != "rafs" and obj.__module__ != module.__name__ and name not in (
                getattr(module, "__all__", None) or ()):
            continue                            # imported from elsewhere: checked where it is defined
        yield f"{module.__name__}.{name}", obj


def _members(cls):
    """(name, object) of the public methods and properties ``cls`` defines itself."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if isinstance(value, property) or inspect.isfunction(value):
            yield name, value


def undocumented() -> list[str]:
    missing = []
    seen = set()
    objects = [(f"rafs.{name}", getattr(rafs, name)) for name in TOP_LEVEL]
    for module_name in MODULES:
        module = importlib.import_module(module_name)
        if not (module.__doc__ or "").strip():
            missing.append(f"module {module_name}")
        objects.extend(_own_public(module))
    for qualified, obj in objects:
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if not (inspect.getdoc(obj) or "").strip() or (inspect.isclass(obj) and obj.__doc__ is None):
            missing.append(qualified)
        if inspect.isclass(obj):
            for name, member in _members(obj):
                doc = member.__doc__ if not isinstance(member, property) else (member.fget.__doc__ if member.fget
                                                                               else None)
                if not (doc or "").strip():
                    missing.append(f"{qualified}.{name}")
    return missing


def test_the_walk_finds_the_api():
    """The walk reaches the objects it must check (it is not silently checking nothing)."""
    objects = {name for module in MODULES for name, _ in _own_public(importlib.import_module(module))}
    assert {"rafs.open", "rafs.Image", "rafs.model.Inode", "rafs.errors.RafsError", "rafs.tables.inodes",
            "rafs.fsspec.RafsFileSystem"} <= objects
    members = {name for name, _ in _members(rafs.Image)}
    assert {"read", "stat", "open", "listdir", "chunks", "blobs", "prefetch", "check"} <= members


def test_every_public_object_has_a_docstring():
    missing = undocumented()
    assert not missing, f"{len(missing)} public objects without a docstring:\n" + "\n".join(missing)
