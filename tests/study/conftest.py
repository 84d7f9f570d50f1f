"""Fixtures of the study tests."""

import pytest


@pytest.fixture
def storage_url(request, tmp_path):
    """An Optuna storage URL of the kind parametrized indirectly: journal, sqlite or
    postgresql (a database of its own on the local server)."""
    kind = request.param
    if kind == "journal":
        return f"journal:{tmp_path / 'journal.log'}"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return request.getfixturevalue("postgres_db")
