"""`nova loadtest`: Locust at k× peak against the real pipeline, judged against `slo:`.

Modules, in the order a run uses them:

- `shapes`, `plan` — the profiles (steady, step, spike, find-max) cut into steps; the plan every
  process shares (run id, steps, producers, analysts);
- `stamping` — pre-encoded transactions re-sent with a fresh id and the intended send time;
- `producer` — the paced Kafka producer: sends on schedule, samples delivery reports;
- `queries` — the analysts' dashboard queries (`loadtest.queries`);
- `measure` — the Locust master's bookkeeping: HdrHistograms per second and per step, the
  ingest group's commit timeline that produce→queryable is measured against, the phases;
- `latency`, `results` — histograms and the measured run as plain data;
- `completeness`, `verdict` — every acked event stored once; each step against `slo:`;
- `report` — the HTML report, CSV and JSON; `run` — ingest and Locust as subprocesses.

The Locust side (users, the shape, messages between master and workers) is `loadtests/pipeline.py`;
locust and gevent are imported only there, never in this package.
"""

from pipelines.loadtest.plan import LoadPlan, build_plan, parse_duration
from pipelines.loadtest.run import LoadtestOutcome, run_loadtest, run_worker

__all__ = ["LoadPlan", "LoadtestOutcome", "build_plan", "parse_duration", "run_loadtest", "run_worker"]
