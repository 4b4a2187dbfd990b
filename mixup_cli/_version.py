"""The package's version, in a module of its own: the library's modules read
it from here, so none of them imports the package's public namespace."""

__version__ = "0.1.0"
