"""Apache Kafka, single node in KRaft combined mode (broker + controller), jars from Maven Central.

Layout under the state dir (`kafka/`): `server.properties` and `log4j2.xml` (rewritten at each
start from the settings), `cluster.id`, `data/` (log dirs and the KRaft metadata log),
`logs/server.log` (log4j2), `kafka.out` (JVM stdout/stderr: crashes before logging starts),
`kafka.pid`.

The jars are shared by every state dir on the machine: Maven copies the runtime dependencies
of `stack/kafka/pom.xml` once per version into `$XDG_CACHE_HOME/nova/kafka-<version>/lib`
(default `~/.cache/…`), so a second `up`, and the tests' own stack, never run Maven again.
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import uuid
from pathlib import Path
from xml.sax.saxutils import quoteattr

from pipelines.errors import StackError
from pipelines.stack import _proc
from pipelines.stack._base import JvmService
from pipelines.stack._proc import Progress

POM = Path(__file__).resolve().parents[2] / "stack" / "kafka" / "pom.xml"
NODE_ID = 1


def jar_cache_dir(version: str) -> Path:
    """Where the jars of Kafka `version` are cached, shared between state dirs."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "nova" / f"kafka-{version}"


class Kafka(JvmService):
    name = "kafka"
    dir_name = "kafka"
    stop_timeout_s = 30.0
    start_timeout_s = 120.0

    @property
    def properties(self) -> Path:
        return self.dir / "server.properties"

    @property
    def signature(self) -> Path:
        return self.properties

    @property
    def log_file(self) -> Path:
        return self.dir / "logs" / "server.log"

    @property
    def lib_dir(self) -> Path:
        return jar_cache_dir(self.stack.kafka_version) / "lib"

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.stack.kafka_port} (controller :{self.stack.kafka_controller_port})"

    def ports(self) -> list[tuple[int, str]]:
        return [
            (self.stack.kafka_port, "stack.kafka_port"),
            (self.stack.kafka_controller_port, "stack.kafka_controller_port"),
        ]

    def _log_excerpt(self, lines: int = 8) -> str:
        # A JVM that dies early (bad flag, no memory) only writes to its stdout file.
        if self.stdout_file.exists() and (
            not self.log_file.exists() or self.stdout_file.stat().st_mtime > self.log_file.stat().st_mtime
        ):
            tail = [line for line in _proc.tail_lines(self.stdout_file, lines) if line.strip()]
            return ("; last output lines:\n    " + "\n    ".join(tail)) if tail else ""
        return super()._log_excerpt(lines)

    def prepare(self, progress: Progress) -> None:
        self._prepare_jvm(
            version=self.stack.kafka_version,
            version_example="4.1.1",
            heap=self.stack.kafka_heap,
            heap_example="1G or 512M",
            progress=progress,
        )
        self._fetch_jars(progress)
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "logs").mkdir(exist_ok=True)
        self._write_config()
        self._format_storage(progress)

    def _fetch_jars(self, progress: Progress) -> None:
        version = self.stack.kafka_version
        _proc.fetch_maven_jars(
            "kafka",
            pom=POM,
            version_property="kafka.version",
            version=version,
            lib_dir=self.lib_dir,
            marker_jar=f"kafka_2.13-{version}.jar",
            artifact="org.apache.kafka:kafka_2.13",
            setting="stack.kafka_version",
            progress=progress,
        )

    def _write_config(self) -> None:
        s = self.stack
        props = {
            "process.roles": "broker,controller",
            "node.id": str(NODE_ID),
            # Static voters: the quorum follows the configured port, so changing it needs no re-format.
            "controller.quorum.voters": f"{NODE_ID}@127.0.0.1:{s.kafka_controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port},CONTROLLER://127.0.0.1:{s.kafka_controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{s.kafka_port}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            # Lets tests use short consumer session timeouts (pipeline.session_timeout_ms).
            "group.min.session.timeout.ms": "1000",
            "auto.create.topics.enable": "false",
            "num.recovery.threads.per.data.dir": "1",
        }
        text = "# Written by `nova stack up` from configs/nova.yaml (stack.*); edits are overwritten.\n"
        text += "".join(f"{key}={value}\n" for key, value in props.items())
        _proc.write_if_changed(self.properties, text)
        _proc.write_if_changed(self.dir / "log4j2.xml", _log4j2_xml(self.dir / "logs"))

    def _java(self, main: str, *args: str, heap: str) -> list[str]:
        return [
            shutil.which("java") or "java",
            f"-Xmx{heap}",
            f"-Xms{heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.xml'}",
            f"-Dkafka.logs.dir={self.dir / 'logs'}",
            "-cp",
            f"{self.lib_dir}/*",
            main,
            *args,
        ]

    def _format_storage(self, progress: Progress) -> None:
        if (self.data_dir / "meta.properties").exists():
            return
        id_file = self.dir / "cluster.id"
        cluster_id = id_file.read_text().strip() if id_file.exists() else _new_cluster_id()
        id_file.write_text(cluster_id + "\n")
        progress(f"formatting Kafka storage (cluster id {cluster_id})…")
        log = self.dir / "format.log"
        cmd = self._java(
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            cluster_id,
            "--config",
            str(self.properties),
            "--ignore-formatted",
            heap="256M",
        )
        # The formatter's own log lines would go to server.log; keep them with its output instead.
        cmd = [arg for arg in cmd if not arg.startswith("-Dlog4j2.configurationFile=")]
        with open(log, "wb") as fh:
            result = subprocess.run(
                cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.dir, check=False
            )
        if result.returncode != 0:
            excerpt = "\n    ".join(line for line in _proc.tail_lines(log, 6) if line.strip())
            raise StackError(
                f"kafka: formatting the storage in {self.data_dir} failed:\n    {excerpt}",
                hint=f"see {log}; if {self.data_dir} holds a half-formatted directory, remove it and re-run",
            )

    def launch(self, progress: Progress) -> int:
        progress(f"starting Kafka {self.stack.kafka_version} on 127.0.0.1:{self.stack.kafka_port}…")
        cmd = self._java("kafka.Kafka", str(self.properties), heap=self.stack.kafka_heap)
        pid = _proc.spawn_detached(cmd, log=self.stdout_file, cwd=self.dir)
        _proc.write_pid(self.pid_file, pid)
        return pid

    def check_health(self, timeout_s: float = 5.0) -> str | None:
        port = self.stack.kafka_port
        if not _proc.port_accepts(port):
            return f"nothing accepts connections on 127.0.0.1:{port}"
        from pipelines.kafka import broker_problem

        return broker_problem(f"127.0.0.1:{port}", timeout_s=timeout_s)


def _new_cluster_id() -> str:
    # Kafka's Uuid.randomUuid(): 16 random bytes, URL-safe base64 without padding, never starting with '-'.
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not text.startswith("-"):
            return text


def _log4j2_xml(logs_dir: Path) -> str:
    server = quoteattr(str(logs_dir / "server.log"))
    pattern = quoteattr(str(logs_dir / "server.log.%i"))
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<!-- Written by `nova stack up`; edits are overwritten. Kafka's whole log in one rolling file. -->
<Configuration status="WARN">
  <Appenders>
    <RollingFile name="server" fileName={server} filePattern={pattern}>
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="100 MB"/></Policies>
      <DefaultRolloverStrategy max="5"/>
    </RollingFile>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="org.apache.kafka.raft" level="INFO"/>
    <Logger name="state.change.logger" level="INFO"/>
  </Loggers>
</Configuration>
"""
