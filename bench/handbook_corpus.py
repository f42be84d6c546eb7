"""A second outside-style corpus: the simulator of *Reproducible Machine Learning for Credit Card Fraud
Detection* (Le Borgne et al., chapter 3), re-written here in numpy, as our contract's columns.

It has what that simulator has and nothing more: card (customer), terminal, time and amount.
Customers and terminals sit on a 100x100 grid; a customer pays at terminals within 5 of it, a
Poisson(0-4) number of times a day around noon, normal amounts (mean 5-100, sd mean/2). Frauds,
as there: any amount above 220; every payment at 2 terminals a day for the next 28 days; a
third of 3 customers a day's payments over the next 14 days, amounts x5. Labels are written
without label_time: evaluate with `--label-delay 7d` (its delay). Not used to choose anything
in the detector; it checks that what works on synccfd is not synccfd's alone.

    python bench/handbook_corpus.py --out corpora/handbook --seed 1
    nova fraud evaluate --transactions corpora/handbook/transactions.parquet \
        --labels corpora/handbook/labels.parquet --merchants corpora/handbook/merchants.csv --label-delay 7d --json
"""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DAY_S = 86_400
SCENARIOS = np.array(["", "high_amount", "compromised_terminal", "compromised_customer"], dtype=object)


def simulate(customers: int, terminals: int, days: int, seed: int, start: str) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    cx, cy = rng.uniform(0, 100, customers), rng.uniform(0, 100, customers)
    mean, rate = rng.uniform(5, 100, customers), rng.uniform(0, 4, customers)
    tx, ty = rng.uniform(0, 100, terminals), rng.uniform(0, 100, terminals)
    t_parts, c_parts, term_parts, amt_parts = [], [], [], []
    for c in range(customers):
        near = np.flatnonzero((tx - cx[c]) ** 2 + (ty - cy[c]) ** 2 < 25)
        if not len(near):
            continue
        per_day = rng.poisson(rate[c], days)
        day = np.repeat(np.arange(days), per_day)
        second = rng.normal(DAY_S / 2, 20_000, len(day)).astype(np.int64)
        ok = (second > 0) & (second < DAY_S)
        day, second = day[ok], second[ok]
        amount = rng.normal(mean[c], mean[c] / 2, len(day))
        negative = amount < 0
        amount[negative] = rng.uniform(0, 2 * mean[c], int(negative.sum()))
        t_parts.append(day * DAY_S + second)
        c_parts.append(np.full(len(day), c))
        term_parts.append(rng.choice(near, len(day)))
        amt_parts.append(np.round(amount, 2))
    t, card, term, amount = (np.concatenate(p) for p in (t_parts, c_parts, term_parts, amt_parts))
    order = np.argsort(t, kind="stable")
    t, card, term, amount = t[order], card[order], term[order], amount[order]
    day = t // DAY_S
    scenario = np.zeros(len(t), dtype=np.int64)
    scenario[amount > 220] = 1
    for d in range(days):
        for bad in rng.choice(terminals, 2, replace=False):
            scenario[(term == bad) & (day >= d) & (day < d + 28)] = 2
        for victim in rng.choice(customers, 3, replace=False):
            rows = np.flatnonzero((card == victim) & (day >= d) & (day < d + 14))
            hit = rng.choice(rows, len(rows) // 3, replace=False)
            amount[hit] *= 5
            scenario[hit] = 3
    ids = [str(uuid.UUID(int=int(v))) for v in rng.integers(0, 2**63, len(t))]
    event = (np.datetime64(start) + t.astype("timedelta64[s]")).astype("datetime64[ms]")
    n = len(t)
    transactions = pa.table(
        {
            "transaction_id": ids,
            "event_time": pa.array(event, pa.timestamp("ms", tz="UTC")),
            "card_id": [f"C{c}" for c in card],
            "account_id": [f"C{c}" for c in card],
            "merchant_id": [f"T{v}" for v in term],
            "merchant_category": ["5999"] * n,
            "amount_minor": pa.array(np.rint(amount * 100).astype(np.int64)),
            "currency": ["EUR"] * n,
            "country": ["BR"] * n,
            "channel": ["POS"] * n,
            "status": ["AUTHORIZED"] * n,
        }
    )
    labels = pa.table({"transaction_id": ids, "is_fraud": scenario > 0, "scenario": SCENARIOS[scenario].tolist()})
    return transactions, labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--customers", type=int, default=2000)
    ap.add_argument("--terminals", type=int, default=4000)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--start", default="2026-10-01T00:00:00")
    a = ap.parse_args()
    transactions, labels = simulate(a.customers, a.terminals, a.days, a.seed, a.start)
    a.out.mkdir(parents=True, exist_ok=True)
    pq.write_table(transactions, a.out / "transactions.parquet")
    pq.write_table(labels, a.out / "labels.parquet")
    with open(a.out / "merchants.csv", "w") as f:
        f.write("merchant_id,name,category,segment,country,currency\n")
        f.writelines(f"T{v},Terminal T{v},5999,small,BR,EUR\n" for v in range(a.terminals))
    fraud = np.asarray(labels["is_fraud"])
    print(f"{transactions.num_rows:,} transactions, {fraud.mean():.2%} fraud -> {a.out}")


if __name__ == "__main__":
    main()
