"""The package's version, apart from the facade, so that any room may read it without
importing ``latentseg`` (the facade imports the rooms)."""

__version__ = "0.1.0"
