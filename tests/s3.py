"""A real S3 endpoint on 127.0.0.1 (moto's standalone server), reached through the standard AWS_* variables."""
from __future__ import annotations

import socket
from dataclasses import dataclass

import pytest

BUCKET = "indistill-studies"


@dataclass(frozen=True)
class S3:
    endpoint: str
    env: dict[str, str]  # what a process needs to reach it (pyarrow, boto3 and Ray workers read these)

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name=self.env["AWS_DEFAULT_REGION"],
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return sorted(obj["Key"] for page in pages for obj in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3(monkeypatch) -> S3:
    """moto's S3 server on a free local port with an empty bucket; AWS_* set for this process."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    endpoint = S3(env["AWS_ENDPOINT_URL"], env)
    endpoint.client().create_bucket(Bucket=BUCKET)
    try:
        yield endpoint
    finally:
        server.stop()
