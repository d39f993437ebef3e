"""The built-in data sets, in one place: each module below registers its data sets with
``register_dataset`` on import, exactly as a plugin module does (see ``nfgen.config.plugins``). The
registry (``nfgen.datasets.registry.DATASETS``) imports this module the first time it is read,
so the registry never imports the modules that register into it (no import cycle). A new
built-in format is one name here."""

from nfgen.datasets import celeba, cifar, folder, idx, imagenet, svhn  # noqa: F401  (each registers on import)
