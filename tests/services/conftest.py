"""Every module here runs its own services: each gets its own database."""

import pytest


@pytest.fixture(scope="module")
def database_url(module_database: str) -> str:
    return module_database
