"""An S3 API server for the tests: moto's standalone server (what s3fs's own suite uses), in a
child process on loopback, started once per session and stopped by its pid.

It checks credentials as S3 does: once set up, every request must be signed with the keys of
one of its IAM users. ``writer`` may do anything with S3; ``reader`` may only read and list, so
a write with its keys is refused (``AccessDenied``), as a bucket whose policy refuses writes
refuses them (moto enforces identity policies, not bucket policies: this is the closest real
fault); ``dropbox`` may write and delete but not read. Credentials reach lcer as they reach any S3 client, through the environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``): see :meth:`S3Server.env`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

REGION = "us-east-1"
#: Keys the server knows nobody by.
UNKNOWN_KEYS = ("AKIAUNKNOWNUNKNOWN00", "not-a-secret")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ambient_free(env: dict[str, str]) -> dict[str, str]:
    """``env`` without any AWS setting, and with no credentials file or instance metadata to
    fall back on (so that only what a test sets is used)."""
    clean = {k: v for k, v in env.items() if not k.startswith("AWS_")}
    return clean | {
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": REGION,
    }


@dataclass
class S3Server:
    """A running moto server: its endpoint, its pid, and the keys of its users by name."""

    endpoint: str
    pid: int
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)

    def env(
        self, user: str | None = "writer", keys: tuple[str, str] | None = None
    ) -> dict[str, str]:
        """The AWS variables of a client of this server signing as ``user`` (or with ``keys``;
        none at all when both are None), on top of an environment free of ambient AWS settings."""
        env = ambient_free({}) | {"AWS_ENDPOINT_URL": self.endpoint}
        chosen = keys or (self.keys[user] if user else None)
        if chosen:
            env |= {"AWS_ACCESS_KEY_ID": chosen[0], "AWS_SECRET_ACCESS_KEY": chosen[1]}
        return env

    def client(self, service: str = "s3", user: str = "writer") -> Any:
        import boto3

        key, secret = self.keys.get(user, ("testing", "testing"))
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
        )

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (if new); its ``s3://`` URL."""
        s3 = self.client()
        with contextlib.suppress(s3.exceptions.BucketAlreadyOwnedByYou):
            s3.create_bucket(Bucket=name)
        return f"s3://{name}"

    def objects(self, url: str) -> list[str]:
        """The keys under an ``s3://bucket/prefix`` URL, sorted (relative to the prefix)."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        prefix = f"{prefix}/" if prefix else ""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        keys = [o["Key"] for page in pages for o in page.get("Contents", [])]
        return sorted(k.removeprefix(prefix) for k in keys)

    def versions(self, url: str) -> dict[str, tuple[str, ...]]:
        """The objects under an ``s3://bucket/prefix`` URL (keys relative to the prefix), each
        with its ETag and LastModified: what a new PUT of the key changes."""
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        prefix = f"{prefix}/" if prefix else ""
        pages = (
            self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        )
        return {
            o["Key"].removeprefix(prefix): (o["ETag"], o["LastModified"].isoformat())
            for page in pages
            for o in page.get("Contents", [])
        }

    def read(self, url: str) -> bytes:
        bucket, _, key = url.removeprefix("s3://").partition("/")
        return bytes(self.client().get_object(Bucket=bucket, Key=key)["Body"].read())

    def buckets(self) -> set[str]:
        return {b["Name"] for b in self.client().list_buckets()["Buckets"]}


def _post(url: str, body: bytes) -> None:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "text/plain"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def _setup(server: S3Server) -> None:
    """Users ``writer``, ``reader`` and ``dropbox`` (see above), then credentials checked."""
    iam = server.client("iam", user="")
    allowed = {
        "writer": ["s3:*"],
        "reader": ["s3:GetObject", "s3:ListBucket", "s3:ListAllMyBuckets"],
        "dropbox": ["s3:PutObject", "s3:DeleteObject"],
    }
    for user, actions in allowed.items():
        iam.create_user(UserName=user)
        policy = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": actions, "Resource": "*"}],
        }
        iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        server.keys[user] = (key["AccessKeyId"], key["SecretAccessKey"])
    # From now on every request is authenticated and authorised (moto counts from zero).
    _post(f"{server.endpoint}/moto-api/reset-auth", b"0")


@contextlib.contextmanager
def s3_server(log: Path) -> Iterator[S3Server]:
    """Start ``python -m moto.server`` on a free loopback port (its own process group), set it
    up (:func:`_setup`), and stop it by its pid afterwards, whatever happens."""
    port = _free_port()
    env = ambient_free(dict(os.environ))
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = S3Server(endpoint=f"http://127.0.0.1:{port}", pid=proc.pid)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"moto server exited:\n{log.read_text()[-3000:]}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, (
                    f"moto server silent:\n{log.read_text()[-3000:]}"
                )
                time.sleep(0.1)
        _setup(server)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@dataclass
class SharedStorage:
    """A storage URL that a test's pools or nodes share, the environment that reaches it (to
    add to theirs), and what it holds."""

    url: str
    env: dict[str, str]
    server: S3Server | None = None

    def objects(self, under: str = "") -> list[str]:
        """The keys (file paths) under ``URL/under``, relative to it, sorted."""
        url = f"{self.url}/{under}".rstrip("/")
        if self.server is not None:
            return self.server.objects(url)
        root = Path(unquote(urlparse(url).path))
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())

    def versions(self, under: str = "") -> dict[str, tuple[str, ...]]:
        """The keys under ``URL/under`` (relative to it), each with what a new write of it
        changes: ETag and LastModified of an S3 object, size and mtime (ns) of a file."""
        url = f"{self.url}/{under}".rstrip("/")
        if self.server is not None:
            return self.server.versions(url)
        root = Path(unquote(urlparse(url).path))
        return {
            str(p.relative_to(root)): (str(p.stat().st_size), str(p.stat().st_mtime_ns))
            for p in root.rglob("*")
            if p.is_file()
        }

    def read(self, key: str) -> bytes:
        url = f"{self.url}/{key}"
        if self.server is not None:
            return self.server.read(url)
        return Path(unquote(urlparse(url).path)).read_bytes()


def shared_storage(request: Any, folder: Path, bucket: str) -> SharedStorage:
    """A prefix in ``bucket`` on the session's S3 API server (the ``s3_server`` fixture) where
    moto and s3fs are installed, else ``folder`` as a ``file://`` URL."""
    if all(importlib.util.find_spec(m) for m in ("moto", "s3fs")):
        server: S3Server = request.getfixturevalue("s3_server")
        return SharedStorage(f"{server.bucket(bucket)}/lcer", server.env("writer"), server)
    return SharedStorage(folder.as_uri(), {})
