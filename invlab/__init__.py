"""The ground floor every layer shares: the config schema and ``ConfigError``, ``Registry`` and
the did-you-mean helper, and small utilities (atomic files, figures, image windows, provenance).

Nothing here imports ``models``, ``augment``, ``eval`` or ``train``."""
