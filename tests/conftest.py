import sys

import pytest


@pytest.fixture(autouse=True)
def _plain_argv(monkeypatch):
    """LightningCLI(args=...) warns when sys.argv also carries pytest's own arguments."""
    monkeypatch.setattr(sys, "argv", ["vsmd"])
