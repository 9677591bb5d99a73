"""Fixtures shared by several test modules."""
import pytest

from tests.s3 import s3  # noqa: F401 (a real S3 endpoint on 127.0.0.1)


@pytest.fixture(scope="session")
def two_node_study(tmp_path_factory):
    """The two-node study of tests/test_study.py, run once per session: its tests read it, and the
    node-loss study is warm-started from it (tests/test_node_loss.py)."""
    from tests.test_study import run_two_node_study

    return run_two_node_study(tmp_path_factory)
