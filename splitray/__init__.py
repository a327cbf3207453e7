"""splitray: simulate split learning with heterogeneous clients on Ray."""

__version__ = "0.1.0"
