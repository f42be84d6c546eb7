"""Apache ZooKeeper, standalone, jars from Maven Central: the coordination the local ClickHouse cluster needs.

Started only with `nova stack up --with clickhouse-cluster`, always before the cluster's servers:
a clickhouse-server 18.16 that starts before ZooKeeper answers can crash (a segfault was seen on
the first `ON CLUSTER` query), so the servers' launch waits for `srvr` to report `Mode: standalone`.

Layout under the state dir (`zookeeper/`): `zoo.cfg` and `logback.xml` (rewritten at each start),
`data/` (snapshots and transaction log), `logs/zookeeper.log`, `zookeeper.out` (JVM output),
`zookeeper.pid`. The jars are cached per version like Kafka's, in `$XDG_CACHE_HOME/nova/zookeeper-<v>/lib`.
ZooKeeper declares metrics-core and snappy-java "provided" (its tarball ships them): the pom in
`stack/zookeeper/` names them, so Maven copies them too. The AdminServer (port 8080) is off.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from xml.sax.saxutils import escape

from pipelines.stack import _proc
from pipelines.stack._base import JvmService
from pipelines.stack._proc import Progress

POM = Path(__file__).resolve().parents[2] / "stack" / "zookeeper" / "pom.xml"


def zookeeper_jar_dir(version: str) -> Path:
    """Where the jars of ZooKeeper `version` are cached, shared between state dirs."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nova" / f"zookeeper-{version}" / "lib"


def four_letter_word(port: int, word: str, *, timeout_s: float = 2.0) -> str:
    """ZooKeeper's answer to a four-letter command (`srvr`, `ruok`, `mntr`) on 127.0.0.1:port."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(word.encode())
        chunks = []
        while True:
            data = sock.recv(4096)
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks).decode(errors="replace")


class ZooKeeper(JvmService):
    name = "zookeeper"
    dir_name = "zookeeper"
    stop_timeout_s = 20.0
    start_timeout_s = 60.0

    @property
    def config_file(self) -> Path:
        return self.dir / "zoo.cfg"

    @property
    def signature(self) -> Path:
        return self.config_file

    @property
    def log_file(self) -> Path:
        return self.dir / "logs" / "zookeeper.log"

    @property
    def lib_dir(self) -> Path:
        return zookeeper_jar_dir(self.stack.zookeeper_version)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.stack.zookeeper_port}"

    def ports(self) -> list[tuple[int, str]]:
        return [(self.stack.zookeeper_port, "stack.zookeeper_port")]

    def _log_excerpt(self, lines: int = 8) -> str:
        tail = [line for line in _proc.tail_lines(self.stdout_file, lines) if line.strip()]
        return ("; last output lines:\n    " + "\n    ".join(tail)) if tail else super()._log_excerpt(lines)

    def prepare(self, progress: Progress) -> None:
        self._prepare_jvm(
            version=self.stack.zookeeper_version,
            version_example="3.9.4",
            heap=self.stack.zookeeper_heap,
            heap_example="256M",
            progress=progress,
        )
        self._fetch_jars(progress)
        for sub in ("data", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        _proc.write_if_changed(self.config_file, self._config())
        _proc.write_if_changed(self.dir / "logback.xml", _logback_xml(self.log_file))

    def _fetch_jars(self, progress: Progress) -> None:
        version = self.stack.zookeeper_version
        _proc.fetch_maven_jars(
            "zookeeper",
            pom=POM,
            version_property="zookeeper.version",
            version=version,
            lib_dir=self.lib_dir,
            marker_jar=f"zookeeper-{version}.jar",
            artifact="org.apache.zookeeper:zookeeper",
            setting="stack.zookeeper_version",
            progress=progress,
        )

    def _config(self) -> str:
        props = {
            "tickTime": "500",
            "initLimit": "10",
            "syncLimit": "5",
            "dataDir": str(self.data_dir),
            "clientPort": str(self.stack.zookeeper_port),
            "clientPortAddress": "127.0.0.1",
            "maxClientCnxns": "200",
            "admin.enableServer": "false",
            "4lw.commands.whitelist": "srvr,ruok,mntr,stat",
            "autopurge.snapRetainCount": "3",
            "autopurge.purgeInterval": "1",
            # A local test cluster: fsync on every write only slows ClickHouse's inserts down.
            "forceSync": "no",
        }
        text = "# Written by `nova stack up --with clickhouse-cluster` (stack.zookeeper_*); edits are overwritten.\n"
        return text + "".join(f"{key}={value}\n" for key, value in props.items())

    def launch(self, progress: Progress) -> int:
        progress(f"starting ZooKeeper {self.stack.zookeeper_version} on 127.0.0.1:{self.stack.zookeeper_port}…")
        heap = self.stack.zookeeper_heap
        cmd = [
            shutil.which("java") or "java",
            f"-Xmx{heap}",
            f"-Xms{heap}",
            "-XX:+UseSerialGC",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlogback.configurationFile={self.dir / 'logback.xml'}",
            "-Dzookeeper.jmx.log4j.disable=true",
            "-cp",
            f"{self.lib_dir}/*",
            "org.apache.zookeeper.server.ZooKeeperServerMain",
            str(self.config_file),
        ]
        pid = _proc.spawn_detached(cmd, log=self.stdout_file, cwd=self.dir)
        _proc.write_pid(self.pid_file, pid)
        return pid

    def check_health(self, timeout_s: float = 2.0) -> str | None:
        port = self.stack.zookeeper_port
        try:
            answer = four_letter_word(port, "srvr", timeout_s=timeout_s)
        except OSError as exc:
            return f"srvr on 127.0.0.1:{port} failed: {exc}"
        mode = next((line for line in answer.splitlines() if line.startswith("Mode:")), "")
        if mode.strip() != "Mode: standalone":
            return f"srvr on 127.0.0.1:{port} answered {answer.strip()[:80]!r}, not 'Mode: standalone'"
        return None


def _logback_xml(log_file: Path) -> str:
    path = escape(str(log_file))
    pattern = escape(str(log_file) + ".%i")
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by `nova stack up`; edits are overwritten. ZooKeeper's whole log in one rolling file. -->
<configuration>
  <appender name="file" class="ch.qos.logback.core.rolling.RollingFileAppender">
    <file>{path}</file>
    <rollingPolicy class="ch.qos.logback.core.rolling.FixedWindowRollingPolicy">
      <fileNamePattern>{pattern}</fileNamePattern>
      <maxIndex>3</maxIndex>
    </rollingPolicy>
    <triggeringPolicy class="ch.qos.logback.core.rolling.SizeBasedTriggeringPolicy">
      <maxFileSize>50MB</maxFileSize>
    </triggeringPolicy>
    <encoder><pattern>%d{{ISO8601}} %-5level [%thread] %logger{{1}} - %msg%n</pattern></encoder>
  </appender>
  <root level="INFO"><appender-ref ref="file"/></root>
</configuration>
"""
