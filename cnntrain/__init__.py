"""cnntrain: train classic CNN image classifiers from YAML configs.

Kept free of heavy imports so that `cnntrain --help` and config errors answer fast;
torch is imported only when training starts.
"""

__version__ = "0.1.0"
