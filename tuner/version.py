"""The tuner's version, stamped on every record (a leaf module: records/ imports it)."""

__version__ = "0.1.0"
