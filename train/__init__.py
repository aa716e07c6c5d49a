"""Training: typed config, data (sources, rendering, datamodule), the LightningModule, ``fit``,
loggers and the ``invlab`` command line. Modules are imported where used, so ``import train``
stays cheap."""
