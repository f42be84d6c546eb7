"""The cold tier's object store: S3 (any endpoint, boto3) or a local directory, same key layout.

Objects are named by keys relative to the target's prefix (`TABLE/dt=YYYY-MM-DD/part-ID.parquet`,
`TABLE/dt=YYYY-MM-DD/manifest.json`). Python handles the small objects (manifests, listings,
deletes); the ClickHouse engine reads and writes the Parquet files itself, through the table
functions `s3()` / `file()` that `read_function` and `write_function` render.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.clickhouse.sql import literal
from pipelines.lifecycle.errors import ColdStoreError
from pipelines.lifecycle.policy import ColdTarget

if TYPE_CHECKING:
    from collections.abc import Sequence


class ColdStore:
    """Keys under one cold target; see the module docstring."""

    def __init__(self, target: ColdTarget) -> None:
        self.target = target
        self._client: Any = None

    def ensure(self) -> None:
        """Create the bucket (or directory) when missing; idempotent."""
        if self.target.scheme == "file":
            assert self.target.local_dir is not None
            self.target.local_dir.mkdir(parents=True, exist_ok=True)
            return
        client = self._s3()
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            client.head_bucket(Bucket=self.target.bucket)
            return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchBucket", "NotFound"):
                raise self._error("cannot reach the bucket", exc) from None
        except BotoCoreError as exc:
            raise self._error("cannot reach the bucket", exc) from None
        try:
            client.create_bucket(Bucket=self.target.bucket)
        except (BotoCoreError, ClientError) as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise self._error("cannot create the bucket", exc) from None

    def get_json(self, key: str) -> dict[str, Any] | None:
        """The JSON object at `key`, or None when there is none."""
        data = self.get_bytes(key)
        if data is None:
            return None
        try:
            value = json.loads(data)
        except ValueError:
            raise ColdStoreError(
                f"{self.describe(key)} is not valid JSON", hint="inspect it; restore it or delete it by hand"
            ) from None
        if not isinstance(value, dict):
            raise ColdStoreError(f"{self.describe(key)} is not a JSON object")
        return value

    def put_json(self, key: str, value: dict[str, Any]) -> None:
        self.put_bytes(key, (json.dumps(value, indent=2, sort_keys=True) + "\n").encode())

    def get_bytes(self, key: str) -> bytes | None:
        if self.target.scheme == "file":
            try:
                return self._path(key).read_bytes()
            except FileNotFoundError:
                return None
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._s3().get_object(Bucket=self.target.bucket, Key=self._key(key))
            body: bytes = response["Body"].read()
            return body
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404", "NotFound"):
                return None
            raise self._error(f"cannot read {key}", exc) from None
        except BotoCoreError as exc:
            raise self._error(f"cannot read {key}", exc) from None

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write `data` at `key` atomically (a reader sees the old object or the new one)."""
        if self.target.scheme == "file":
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            tmp.replace(path)
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._s3().put_object(Bucket=self.target.bucket, Key=self._key(key), Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise self._error(f"cannot write {key}", exc) from None

    def list_keys(self, prefix: str) -> list[str]:
        """Keys (relative to the target) that start with `prefix`, sorted."""
        if self.target.scheme == "file":
            root = self._path("")
            base = self._path(prefix)
            folder = base if prefix.endswith("/") else base.parent
            if not folder.exists():
                return []
            found = [str(p.relative_to(root)) for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]
            return sorted(k for k in found if k.startswith(prefix))
        from botocore.exceptions import BotoCoreError, ClientError

        keys: list[str] = []
        strip = len(self._key(""))
        try:
            paginator = self._s3().get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.target.bucket, Prefix=self._key(prefix)):
                keys += [str(obj["Key"])[strip:] for obj in page.get("Contents", [])]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "NoSuchBucket":
                return []
            raise self._error(f"cannot list {prefix}", exc) from None
        except BotoCoreError as exc:
            raise self._error(f"cannot list {prefix}", exc) from None
        return sorted(keys)

    def delete(self, keys: Sequence[str]) -> None:
        """Delete objects; missing ones are fine (a re-run after a crash deletes again)."""
        if self.target.scheme == "file":
            for key in keys:
                self._path(key).unlink(missing_ok=True)
            return
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            for key in keys:
                self._s3().delete_object(Bucket=self.target.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._error("cannot delete objects", exc) from None

    def read_function(self, keys: Sequence[str], structure: str) -> str:
        """`s3(...)`/`file(...)` reading exactly these Parquet objects with `structure` (name Type, …)."""
        if not keys:
            raise ValueError("read_function needs at least one key")
        pattern = keys[0] if len(keys) == 1 else "{" + ",".join(keys) + "}"
        return self._function(pattern, structure)

    def write_function(self, key: str) -> str:
        """`s3(...)`/`file(...)` that an `INSERT INTO FUNCTION` writes one Parquet object through."""
        return self._function(key, None)

    def truncate_setting(self) -> str:
        """The setting that lets an insert overwrite an object a crashed run left behind."""
        return "s3_truncate_on_insert" if self.target.scheme == "s3" else "engine_file_truncate_on_insert"

    def _function(self, pattern: str, structure: str | None) -> str:
        tail = f", {literal(structure)}" if structure else ""
        if self.target.scheme == "file":
            return f"file({literal(str(self._path('')) + '/' + pattern)}, 'Parquet'{tail})"
        t = self.target
        url = f"{t.endpoint}/{t.bucket}/{self._key(pattern)}"
        return f"s3({literal(url)}, {literal(t.access_key_id)}, {literal(t.secret_access_key)}, 'Parquet'{tail})"

    def describe(self, key: str = "") -> str:
        if self.target.scheme == "file":
            return str(self._path(key))
        return f"s3://{self.target.bucket}/{self._key(key)}"

    def _key(self, key: str) -> str:
        return f"{self.target.prefix}/{key}" if self.target.prefix else key

    def _path(self, key: str) -> Path:
        assert self.target.local_dir is not None
        return self.target.local_dir / key if key else self.target.local_dir

    def _s3(self) -> Any:
        if self._client is None:
            import boto3
            from botocore.config import Config

            t = self.target
            self._client = boto3.client(
                "s3",
                endpoint_url=t.endpoint,
                aws_access_key_id=t.access_key_id,
                aws_secret_access_key=t.secret_access_key,
                region_name=t.region,
                config=Config(
                    s3={"addressing_style": "path"}, retries={"max_attempts": 3}, connect_timeout=5, read_timeout=30
                ),
            )
        return self._client

    def _error(self, what: str, exc: BaseException) -> ColdStoreError:
        return ColdStoreError(
            f"cold tier {self.target.describe()}: {what}: {exc}",
            hint="check cold.url / cold.endpoint and the credentials in configs/lifecycle.yaml "
            "(local stack: nova stack up --with seaweedfs)",
        )
