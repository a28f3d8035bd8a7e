"""Fuzz targets: every adapter's parse path, the config and task-file loaders, the API's request bodies.

A target (``TARGETS``, see ``medweave.fuzz.targets``) takes one input as bytes and runs it through the
same code a user's file or request goes through. It returns normally when the input was read or
refused the way the tool refuses bad input (an ``IngestError`` / ``NotADataFile`` from an adapter, a
``ConfigError`` / ``TaskError`` from a loader, a JSON error with a message below 500 from the API) and
raises ``Finding`` (or lets any other exception through) when it was not: that is a bug.

``benchmarks/fuzz.py`` drives the targets with atheris (coverage-guided, libFuzzer); the tests run them
on their seeds, on seeded random mutations of them, and on every input a fuzz run found, without atheris.
"""

from .targets import TARGETS, Finding, Target, get_target

__all__ = ["TARGETS", "Finding", "Target", "get_target"]
