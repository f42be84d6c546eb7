"""A replay job's committed progress: what `--resume` continues after.

The checkpoint is committed in the same Kafka transaction as the batch it describes, to a compacted
topic keyed by the job id, so it is exactly as far as the messages that are visible. Its JSON is
read by every later run of the job (and by people inspecting the topic): fields may be added, never
renamed, and a checkpoint written by an older nova still reads.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, ValidationError

from pipelines.dualrun.mapping import UNPLACEABLE_US
from pipelines.dualrun.replay.sources import Key, ReplaySource, utc_of
from pipelines.errors import KafkaError
from pipelines.kafka.transactional import last_committed

if TYPE_CHECKING:
    from pipelines.config import Settings

CHECKPOINT_TOPIC = "nova.replay.checkpoints"


class Position(BaseModel):
    """The last row a committed batch covered: replay continues with the rows after this key."""

    utc_us: int = Field(description="UTC event time in µs since the epoch (the first part of the order key).")
    utc: str | None = Field(
        default=None, description="The same time in ISO 8601, for people; None for an unplaceable row."
    )
    txn_ref: str = Field(description="The row's id: the tie-breaker of the order key.")

    @classmethod
    def of(cls, key: Key) -> Position:
        utc = utc_of(key[0]).isoformat() if key[0] != UNPLACEABLE_US else None
        return cls(utc_us=key[0], utc=utc, txn_ref=key[1])

    @property
    def key(self) -> Key:
        return self.utc_us, self.txn_ref


class Checkpoint(BaseModel):
    """The job's committed progress, stored in the compacted checkpoint topic under the job id."""

    job: str = Field(description="The job id (`job_id`): also the message key.")
    source: str = Field(default="", description="The source, password-free, as `describe()` shows it.")
    since: str = Field(default="", description="Start of the range, ISO 8601.")
    until: str = Field(default="", description="End of the range (exclusive), ISO 8601.")
    topic: str = Field(default="", description="The topic the rows are replayed into.")
    position: Position | None = Field(default=None, description="The last row of the last committed batch.")
    read: int = Field(default=0, description="Rows read over all runs of the job.")
    produced: int = Field(default=0, description="Messages produced (and committed) over all runs.")
    rejected: dict[str, int] = Field(default_factory=dict, description="Rejected rows by reason, over all runs.")
    reject_file: str = Field(default="", description="The reject file of the last run.")
    reject_offset: int = Field(default=0, description="Length of the reject file when the batch committed.")
    complete: bool = Field(default=False, description="True once the whole range is replayed.")
    runs: int = Field(default=0, description="Runs of the job so far.")
    updated_at: str = Field(default="", description="When the checkpoint was written (UTC, ISO 8601).")

    @property
    def after(self) -> Key | None:
        """The key replay continues after, or None to start at the beginning of the range."""
        return None if self.position is None else self.position.key

    def to_json(self) -> bytes:
        """The checkpoint's message value, stamped with the time of writing."""
        self.updated_at = datetime.now(UTC).isoformat()
        return self.model_dump_json().encode()


def job_id(*, source: ReplaySource, since: datetime, until: datetime, topic: str) -> str:
    """Stable id of a replay job: the same source, range and topic are the same job."""
    text = f"{source.identity}|{since.isoformat()}|{until.isoformat()}|{topic}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def read_checkpoint(*, settings: Settings, topic: str, job: str, timeout_s: float = 120.0) -> Checkpoint | None:
    """The job's last committed checkpoint (read_committed), or None."""
    raw = last_committed(settings, topic=topic, key=job.encode(), timeout_s=timeout_s)
    if raw is None:
        return None
    try:
        return Checkpoint.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise KafkaError(
            f"the checkpoint of replay job {job} in topic '{topic}' cannot be read: {where}: {first['msg']}",
            hint="replay into another --checkpoint-topic (the job starts from the beginning)",
        ) from None
