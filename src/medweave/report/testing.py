"""Pytest fixtures shared by the tests of explanations, report and server (imported by their conftests)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def phantom_model(tmp_path_factory):
    """A small phantom cohort with a trained sequential model, built once per test session."""
    from .demo import small_phantom_model

    return small_phantom_model(tmp_path_factory.getbasetemp() / "mw-phantom")


@pytest.fixture(scope="session")
def ctx(phantom_model):
    """The phantom model loaded with its cohort."""
    from ..explain import ModelContext

    return ModelContext.load(phantom_model)
