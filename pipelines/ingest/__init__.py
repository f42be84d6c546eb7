"""`nova ingest`: exactly-once stream workers from Kafka into ClickHouse.

Per batch, in this order (the ClickHouse Kafka Connect sink's per-partition state machine,
with ClickHouse itself as the store of that state):

1. decode → validate → enrich → score the polled messages into one columnar batch;
   every message that fails goes to the dead-letter topic (produced and flushed first);
2. write `pending` rows [begin, end] per topic-partition to the ingest_state table;
3. insert the batch;
4. write `committed` rows for the same ranges;
5. commit the offsets to Kafka (informational: ClickHouse's state decides where to resume).

On assignment a worker reads the state: after `committed` it resumes at end + 1; after
`pending` (a crash between 2 and 4) it re-reads [begin, end] and inserts only the offsets
the table does not hold yet — the same check a retried insert makes. So no event is lost or
stored twice whatever dies when, and on any server version: no insert dedup tokens needed.
"""

from pipelines.ingest.worker import IngestReport, run_ingest

__all__ = ["IngestReport", "run_ingest"]
