"""Shared building blocks of the stage scripts. Scripts import the modules they need explicitly."""

__version__ = "0.1.0"
