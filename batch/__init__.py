"""usageplace-batch: legacy file drops -> Ropo One usage place events."""

__version__ = "0.1.0"
