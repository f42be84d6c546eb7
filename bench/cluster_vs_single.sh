#!/usr/bin/env bash
# Quiet-machine figures for issue 13: ingest into the single server vs the cluster (detection off), and a load test on the cluster.
set -u
cd "$(dirname "$0")/.."
N=${N:-300000}
ts=$(date +%s)
T=clb$ts
CL_URL=clickhouse://default:@127.0.0.1:19101,127.0.0.1:19102,127.0.0.1:19103
common() { env NOVA_PIPELINE__TOPIC=$T.tx NOVA_PIPELINE__DLQ_TOPIC=$T.dlq NOVA_DETECTION__ENABLED=false "$@"; }
single() { common NOVA_PIPELINE__GROUP_ID=$T-single NOVA_CLICKHOUSE__DATABASE=${T}_single NOVA_CLICKHOUSE__URL=clickhouse://default:@127.0.0.1:19000 "$@"; }
cluster() { common NOVA_PIPELINE__GROUP_ID=$T-cluster NOVA_CLICKHOUSE__DATABASE=${T}_cluster NOVA_CLICKHOUSE__URL=$CL_URL NOVA_CLICKHOUSE__CLUSTER__NAME=nova "$@"; }
.venv/bin/nova stack up --with clickhouse-server --with clickhouse-cluster > /tmp/clb_stack.log 2>&1 || { echo "stack up failed"; tail /tmp/clb_stack.log; exit 1; }
single .venv/bin/nova provision --yes > /tmp/clb_prov1.log 2>&1 || { echo prov1 failed; tail /tmp/clb_prov1.log; }
cluster .venv/bin/nova provision --yes > /tmp/clb_prov2.log 2>&1 || { echo prov2 failed; tail /tmp/clb_prov2.log; }
single .venv/bin/nova generate --count $N --seed 5 --json > /tmp/clb_gen.json 2>&1
for target in single cluster; do
  $target .venv/bin/nova ingest --until-caught-up --workers 2 --quiet --json > /tmp/clb_$target.json 2>/tmp/clb_$target.err
  python3 -c "import json; d=json.load(open('/tmp/clb_$target.json')); print('$target', {k: v for k, v in d.items() if not isinstance(v, (dict, list))})" 2>&1 | tail -2
done
echo "== loadtest on the cluster"
L=clt$ts
env NOVA_PIPELINE__TOPIC=$L.tx NOVA_PIPELINE__DLQ_TOPIC=$L.dlq NOVA_PIPELINE__GROUP_ID=$L-ingest NOVA_CLICKHOUSE__DATABASE=$L NOVA_CLICKHOUSE__URL=$CL_URL NOVA_CLICKHOUSE__CLUSTER__NAME=nova NOVA_DETECTION__ENABLED=false \
  sh -c ".venv/bin/nova provision --yes > /tmp/clt_prov.log 2>&1 && .venv/bin/nova loadtest --duration 30s --rate 5000 --json --report /tmp/clt_report.html > /tmp/clt.json 2>/tmp/clt.err; echo loadtest exit \$?"
python3 -c "import json; d=json.load(open('/tmp/clt.json')); print(json.dumps(d, default=str)[:1500])"
