"""The built-in registrations, in one place: each module below registers its coupling
transforms or conditioners with the registry it imports (``register_transform``,
``register_conditioner``), exactly as a plugin module does (see ``nfgen.config.plugins``).

A registry imports this module the first time it is read (``nfgen.core.registry.Registry``),
so the command line, the tests and a plugin all see the same names, and no built-in module
is imported by the registry it registers into (no import cycle). A new built-in is one line here.
"""

from nfgen.flows import affine, attention, mixture, nets, spline  # noqa: F401  (each registers on import)
