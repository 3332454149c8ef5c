"""mobileclip2: MobileCLIP and MobileCLIP2 as ordinary OpenCLIP / timm model names.

Installing the distribution is enough: an ``open_clip.plugins`` entry point registers the
models when ``open_clip`` is imported. This module stays import-light on purpose (it is
imported at interpreter start by the autoload ``.pth``), so the public API is resolved lazily.
"""

__version__ = "0.1.0"

_LAZY_API = {
    "register": ("mobileclip2.plugin", "register"),
    "list_models": ("mobileclip2.catalog", "list_models"),
    "reparameterize": ("mobileclip2.reparam", "reparameterize"),
    "convert_checkpoint": ("mobileclip2.convert", "convert_checkpoint"),
    "optimize": ("mobileclip2.inference", "optimize"),
    "export_model": ("mobileclip2.export.pipeline", "export_model"),
}
# `mobileclip2.export` is the export package (one module per format); resolved lazily too.
_LAZY_MODULES = ("export",)

__all__ = ["__version__", "EXAMPLE_IMAGE", *_LAZY_API, *_LAZY_MODULES]


def _example_image():
    """Path of the small photo shipped as package data (README examples, ``mobileclip2 classify``)."""
    from importlib import resources
    from pathlib import Path

    return Path(str(resources.files(__name__).joinpath("data/example.jpg")))


def __getattr__(name: str):
    """Import public functions on first use, keeping ``import mobileclip2`` free of torch."""
    if name == "EXAMPLE_IMAGE":
        globals()[name] = value = _example_image()
        return value

    import importlib

    if name in _LAZY_MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    try:
        module_name, attr = _LAZY_API[name]
    except KeyError:
        raise AttributeError(f"module 'mobileclip2' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
