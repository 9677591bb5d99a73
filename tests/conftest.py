"""Fixtures shared by several test modules."""
from tests.s3 import s3  # noqa: F401 (a real S3 endpoint on 127.0.0.1)
