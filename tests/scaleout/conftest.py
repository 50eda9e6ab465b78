import pytest

from tests.testenv import SCALEOUT


def pytest_collection_modifyitems(config, items):
    if not SCALEOUT:
        raise pytest.UsageError("tests/scaleout runs on PostgreSQL + Redis: run it with HUBFLY_TEST_SCALEOUT=1 "
                                "(./scripts/test does)")
