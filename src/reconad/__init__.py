"""reconad: unsupervised visual anomaly detection and localization."""

__version__ = "0.1.0"
