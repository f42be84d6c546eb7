"""`nova ingest`: exactly-once stream workers from Kafka into ClickHouse.

Per batch, in this order (the ClickHouse Kafka Connect sink's per-partition state machine,
with ClickHouse itself as the store of that state):

1. decode → validate → enrich → score the polled messages into one columnar batch;
   every message that fails goes to the dead-letter topic (produced and flushed first);
2. write `pending` rows [begin, end] per topic-partition to the ingest_state table;
3. insert the batch;
4. write `committed` rows for the same ranges;
5. commit the offsets to Kafka (informational: ClickHouse's state decides where to resume).

On assignment a worker claims the partition (a new epoch in ingest_state) and reads the
state: after `committed` it resumes at end + 1; after `pending` (a crash between 2 and 4) it
re-reads [begin, end] and inserts only the offsets the table does not hold yet — the same check
a retried insert makes. So no event is lost or stored twice whatever dies when, and on any
server version: no insert dedup tokens needed. A worker that *stalls* instead of dying, and
wakes up after its successor took over, is fenced by its claim (`pipelines.ingest.fencing`):
before steps 2 and 4 it checks the claim is still its own, and on a server the insert of step 3
is checked by the server itself.

A batch is due at `pipeline.batch_max_rows` or once its oldest row has waited
`pipeline.batch_max_seconds` since it was consumed. With `pipeline.overlap_insert` the insert
(step 3) runs on a thread while the next batch is polled and decoded; steps 4–5 follow once it
returned, and the next batch's step 2 only after them, so the order per partition is unchanged.
Where a row's time goes is measured per stage (`latency.STAGES`) and reported by `nova ingest
--json` and the load test.

Modules: `worker` (one worker's loop), `supervisor` (worker processes), `run` (`run_ingest`,
the summary), `state` (ingest_state: claims and ranges), `fencing`, `latency` (histograms),
`models` (status and report), `metrics` (Prometheus), `transform` (validate, enrich, score).
"""

from pipelines.ingest.models import IngestReport, WorkerStatus
from pipelines.ingest.run import check_workers, run_ingest
from pipelines.ingest.supervisor import install_stop_handlers

__all__ = ["IngestReport", "WorkerStatus", "check_workers", "install_stop_handlers", "run_ingest"]
