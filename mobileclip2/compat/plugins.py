"""Plugin discovery in open_clip itself, for the startup hook (``mobileclip2._autoload``).

Versions handled: no released open_clip (2.24.0 - 3.3.0 checked) discovers plugins itself; an open_clip
carrying patches/0001 exposes ``open_clip.load_plugins`` and runs the ``open_clip.plugins`` entry points
on import, and then our hook steps aside. This module imports nothing: the hook runs at interpreter start.
"""

# Name of the discovery function an open_clip with built-in plugin support exposes.
UPSTREAM_DISCOVERY_ATTR = "load_plugins"


def upstream_discovers_plugins(module: object) -> bool:
    """Whether the just-imported ``module`` runs its plugin entry points itself."""
    return hasattr(module, UPSTREAM_DISCOVERY_ATTR)
