from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def graphs_dir(tmp_path_factory):
    """Where the session's shared test graphs (tests/export/graphs.py) are written."""
    return tmp_path_factory.mktemp("graphs")
