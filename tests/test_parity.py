"""`nova parity-check`: legacy PostgreSQL vs ClickHouse (embedded chdb and the 18.16 server).

Each integration test gets its own PostgreSQL schema holding `card_txn` and its own ClickHouse
database holding the transactions table, fills both with the same ~20k transactions over three
days (zones on both sides of UTC, so local and UTC dates differ; JPY and EUR), injects
discrepancies and checks what `nova parity-check --json` reports, row by row.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import pytest

from tests.browser import screenshot
from tests.conftest import REPO, run_nova, unique

if TYPE_CHECKING:
    from pipelines.dualrun.parity import Normalisation

SINCE = datetime(2024, 3, 4, tzinfo=UTC)  # no DST change in any zone below from 3 to 8 March 2024
UNTIL = SINCE + timedelta(days=3)
DAYS = ["2024-03-04", "2024-03-05", "2024-03-06"]
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "America/Los_Angeles",
    "Asia/Tokyo",
    "Australia/Sydney",
    "Pacific/Kiritimati",
    "Pacific/Pago_Pago",
    "Asia/Kolkata",
]
CURRENCIES = {"EUR": 2, "JPY": 0, "USD": 2, "GBP": 2}
CHANNELS = {"P": "POS", "E": "ECOM", "A": "ATM", "M": "MOTO", "C": "CONTACTLESS"}
STATUSES = {"AUTH": "AUTHORIZED", "CAPT": "CAPTURED", "DECL": "DECLINED", "RFND": "REFUNDED", "REVS": "REVERSED"}
N_ROWS = 20_000

LEGACY_COLUMNS = (
    "txn_ref",
    "txn_ts_local",
    "txn_tz",
    "card_token",
    "acct_no",
    "merchant_code",
    "mcc",
    "amount",
    "ccy",
    "merchant_country",
    "channel_cd",
    "status_cd",
    "device_ref",
    "client_ip",
    "geo_lat",
    "geo_lon",
    "batch_id",
)


# ── the data ──────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Txn:
    """One transaction as the legacy warehouse holds it (local wall clock + zone, major units)."""

    txn_ref: str
    local: datetime  # naive wall clock at the merchant, microseconds
    tz: str
    merchant: str
    amount_minor: int
    ccy: str
    country: str
    channel_cd: str
    status_cd: str

    @property
    def utc(self) -> datetime:
        return self.local.replace(tzinfo=ZoneInfo(self.tz)).astimezone(UTC)

    @property
    def amount(self) -> Decimal:
        return Decimal(self.amount_minor).scaleb(-CURRENCIES[self.ccy]).quantize(Decimal("0.01"))

    def iso(self) -> str:
        return self.utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    def as_contract(self) -> dict[str, Any]:
        """The compared columns as parity-check reports a row."""
        return {
            "transaction_id": self.txn_ref,
            "event_time": self.iso(),
            "merchant_id": self.merchant,
            "amount_minor": self.amount_minor,
            "currency": self.ccy,
            "country": self.country,
            "channel": CHANNELS[self.channel_cd],
            "status": STATUSES[self.status_cd],
        }


def _local(utc: datetime, tz: str) -> datetime:
    return utc.astimezone(ZoneInfo(tz)).replace(tzinfo=None)


def make_rows(n: int = N_ROWS, seed: int = 7) -> list[Txn]:
    """`n` transactions in [SINCE, UNTIL); the first few are the victims the tests tamper with."""
    rng = random.Random(seed)
    merchants = [(f"M{i:04d}", rng.choice(["DE", "FR", "JP", "US", "GB"])) for i in range(40)]
    rows = []
    span_us = int((UNTIL - SINCE).total_seconds() * 1_000_000)
    for i in range(n):
        utc = SINCE + timedelta(microseconds=rng.randrange(span_us))
        tz = ZONES[i % len(ZONES)]
        merchant, country = merchants[rng.randrange(len(merchants))]
        ccy = rng.choice(["EUR", "EUR", "JPY", "USD", "GBP"])
        amount = rng.randrange(100, 2_000_000) if ccy == "JPY" else rng.randrange(1, 5_000_00)
        rows.append(
            Txn(
                str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                _local(utc, tz),
                tz,
                merchant,
                amount,
                ccy,
                country,
                rng.choice(list(CHANNELS)),
                rng.choice(list(STATUSES)),
            )
        )
    # Victims with controlled properties: a UTC row at 23:30 on the first day (a zone slip to
    # New York moves it to the next UTC day), a EUR row for the cent, a JPY row.
    rows[0] = replace(
        rows[0], local=datetime(2024, 3, 4, 23, 30, 15, 250_000), tz="UTC", ccy="EUR", amount_minor=12_345
    )
    rows[1] = replace(rows[1], ccy="EUR", amount_minor=1_005)
    rows[2] = replace(
        rows[2], ccy="JPY", amount_minor=4_800, tz="Asia/Tokyo", local=datetime(2024, 3, 6, 7, 15, 0)
    )  # local day 6 March, UTC 5 March 22:15
    return rows


ROWS = make_rows()


# ── the two sides ─────────────────────────────────────────────────────────────────────────────


def _normalisation() -> Normalisation:
    """The code maps and exponents this module's data uses (the repository's mapping agrees)."""
    from pipelines.dualrun.parity import Normalisation

    return Normalisation(exponents=CURRENCIES, channels=CHANNELS, statuses=STATUSES)


def _pg_connect() -> Any:
    import psycopg

    from pipelines.config import load_settings

    dsn = load_settings(REPO / "configs" / "nova.yaml", environ={}).legacy.dsn
    try:
        return psycopg.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL at {dsn} is not reachable ({exc}); run `nova stack up`")


@pytest.fixture
def legacy_schema() -> Iterator[str]:
    """A schema of this test's own with an empty card_txn; dropped afterwards."""
    schema = unique("parity")
    from pipelines.config import load_settings
    from pipelines.dualrun.warehouse import ensure_schema

    settings = load_settings(REPO / "configs" / "nova.yaml", environ={"NOVA_LEGACY__SCHEMA": schema})
    ensure_schema(settings=settings)  # the warehouse's own DDL (configs/legacy/schema.sql)
    yield schema
    with _pg_connect() as conn:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def fill_legacy(schema: str, rows: list[Txn]) -> None:
    with _pg_connect() as conn, conn.cursor() as cur:
        cur.execute(f'TRUNCATE "{schema}".card_txn')
        with cur.copy(f'COPY "{schema}".card_txn ({", ".join(LEGACY_COLUMNS)}) FROM STDIN') as copy:
            for i, t in enumerate(rows):
                copy.write_row(
                    (
                        t.txn_ref,
                        t.local,
                        t.tz,
                        f"tok{i % 977}",
                        f"acct{i % 311}",
                        t.merchant,
                        "5411",
                        t.amount,
                        t.ccy,
                        t.country,
                        t.channel_cd,
                        t.status_cd,
                        None,
                        None,
                        None,
                        None,
                        1,
                    )
                )


@dataclass
class ClickHouseSide:
    """A ClickHouse database of this test's own, on the embedded store or the 18.16 server."""

    kind: str
    url: str
    database: str
    table: str = "transactions"

    def open(self) -> Any:
        from pipelines.clickhouse import open_store
        from pipelines.config import load_settings

        settings = load_settings(REPO / "configs" / "nova.yaml", environ={})
        return open_store(settings, url=self.url, database=self.database)

    def create(self) -> None:
        from pipelines.clickhouse import ddl
        from pipelines.contracts.specs import load_tables

        spec = next(
            t
            for t in load_tables(
                REPO / "configs" / "clickhouse" / "tables.yaml",
                names={"table": self.table, "database": self.database, "topic": "t", "dlq_topic": "d"},
            ).tables
            if t.name == self.table
        )
        with self.open() as store:
            store.execute(f"CREATE DATABASE IF NOT EXISTS `{self.database}`")
            store.execute(ddl.render_create_table(spec, self.database, store.caps))

    def fill(self, rows: list[Txn], channels: dict[str, str] = CHANNELS) -> None:
        """Replace the table's content with `rows`, at the precision the server keeps (ms, or s on 18.16)."""
        with self.open() as store:
            store.execute(f"TRUNCATE TABLE `{self.database}`.`{self.table}`")
            unit = 1000 if store.caps.datetime64 else 1_000_000
            store.insert_columns(
                self.table,
                {
                    "transaction_id": [t.txn_ref for t in rows],
                    "event_time": [t.utc.replace(microsecond=t.utc.microsecond // unit * unit) for t in rows],
                    "card_id": ["c"] * len(rows),
                    "account_id": ["a"] * len(rows),
                    "merchant_id": [t.merchant for t in rows],
                    "amount_minor": [t.amount_minor for t in rows],
                    "currency": [t.ccy for t in rows],
                    "country": [t.country for t in rows],
                    "channel": [channels[t.channel_cd] for t in rows],
                    "status": [STATUSES[t.status_cd] for t in rows],
                },
            )

    def drop(self) -> None:
        with self.open() as store:
            store.execute(f"DROP DATABASE IF EXISTS `{self.database}`")


@pytest.fixture(params=["chdb", "server"])
def clickhouse(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ClickHouseSide]:
    database = unique("parity")
    if request.param == "chdb":
        side = ClickHouseSide("chdb", f"chdb://{tmp_path / 'chdb'}", database)
    else:
        from pipelines.config import load_settings

        port = load_settings(REPO / "configs" / "nova.yaml", environ={}).stack.clickhouse_tcp_port
        side = ClickHouseSide("server", f"clickhouse://default:@127.0.0.1:{port}/default", database)
    side.create()
    yield side
    side.drop()


@dataclass
class Sides:
    schema: str
    ch: ClickHouseSide

    def fill(self, legacy: list[Txn], clickhouse: list[Txn]) -> None:
        fill_legacy(self.schema, legacy)
        self.ch.fill(clickhouse)

    @property
    def env(self) -> dict[str, str]:
        return {
            "NOVA_LEGACY__SCHEMA": self.schema,
            "NOVA_CLICKHOUSE__URL": self.ch.url,
            "NOVA_CLICKHOUSE__DATABASE": self.ch.database,
        }

    def check(self, *args: str, expect: int) -> dict[str, Any]:
        """`nova parity-check --json` over the three days; its exit code asserted, its JSON returned."""
        result = run_nova(
            "parity-check", "--since", DAYS[0], "--until", "2024-03-07", "--json", *args, expect=expect, env=self.env
        )
        return json.loads(result.stdout)


@pytest.fixture
def sides(legacy_schema: str, clickhouse: ClickHouseSide) -> Sides:
    return Sides(legacy_schema, clickhouse)


# ── unit: argument checks (no services) ───────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--since", "2024-03-07", "--until", "2024-03-04"], "is not before --until"),
        (["--since", "2024-03-04", "--until", "2024-03-04"], "is not before --until"),
        (["--since", "2024-02-30", "--until", "2024-03-04"], "is not a date"),
        (["--since", "yesterday", "--until", "2024-03-04"], "is not a date"),
        (["--since", "2024-03-01", "--until", "2024-03-04", "--by", "day,shoe"], "unknown --by dimension 'shoe'"),
        (["--since", "2024-03-01", "--until", "2024-03-04", "--by", ","], "names no dimension"),
        (["--since", "2024-03-01", "--until", "2024-03-04", "--tolerance-abs", "-1"], "--tolerance-abs"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], message: str) -> None:
    result = run_nova("parity-check", *args, expect=2, env={"NOVA_CLICKHOUSE__URL": "chdb:///nonexistent/never-opened"})
    assert message in result.stderr


def test_parse_helpers() -> None:
    from pipelines.dualrun.parity import parse_by
    from pipelines.errors import UsageError
    from pipelines.instants import parse_instant

    assert parse_by("Day, merchant") == ("day", "merchant")
    assert parse_instant("2024-03-04", option="--since") == SINCE
    assert parse_instant("2024-03-04T06:00:00+02:00", option="--since") == SINCE + timedelta(hours=4)
    assert parse_instant("2024-03-04T06:00", option="--since") == SINCE + timedelta(hours=6)
    with pytest.raises(UsageError):
        parse_by("day,day")
    with pytest.raises(UsageError):
        parse_instant("2024-03-04T06:00:00.5", option="--since", whole_seconds=True)


def test_report_is_self_contained_without_services() -> None:
    from pipelines.dualrun.parity import DailyDelta, ParityResult, RowDiff, SegmentDiff, SideAggregate
    from pipelines.dualrun.report import render_report

    result = ParityResult(
        since=SINCE,
        until=UNTIL,
        by=("day", "merchant"),
        tolerance_abs=0,
        tolerance_rel=0.0,
        legacy_source="legacy.card_txn",
        clickhouse_source="nova.transactions (chdb)",
        segments_compared=3,
        legacy_total=SideAggregate(3, 300, 3),
        clickhouse_total=SideAggregate(2, 200, 2),
        segments=[
            SegmentDiff({"day": DAYS[0], "merchant": "<M&1>"}, SideAggregate(1, 100, 1), SideAggregate(), ["count"])
        ],
        rows=[RowDiff("missing_in_clickhouse", "id-1", legacy={"merchant_id": "<M&1>"})],
        rows_truncated=False,
        daily=[
            DailyDelta(DAYS[0], 1, 0, 100, 0),
            DailyDelta(DAYS[1], 1, 1, 100, 100),
            DailyDelta(DAYS[2], 1, 1, 100, 100),
        ],
    )
    page = render_report(result)
    parsed = _parse_html(page)
    assert parsed.svgs == 2 and parsed.bars == 6
    assert "&lt;M&amp;1&gt;" in page and "<M&1>" not in page
    assert parsed.external == []


# ── integration ───────────────────────────────────────────────────────────────────────────────


@pytest.mark.integration
def test_canonical_strings_and_hashes_are_identical_on_both_sides(sides: Sides) -> None:
    """Every row's canonical string and 60-bit hash, computed by each database, agree."""
    from pipelines.dualrun import parity

    edge = [
        replace(ROWS[3], merchant="  M0001  ", amount_minor=5),  # padding, 0.05 EUR
        replace(ROWS[4], ccy="JPY", amount_minor=1, local=datetime(2024, 3, 5, 0, 0, 0, 999_999), tz="Asia/Tokyo"),
        replace(ROWS[5], ccy="EUR", amount_minor=9_999_999_999),
    ]
    rows = edge + ROWS[6:2006]
    ch_rows = [replace(t, merchant=t.merchant.strip()) for t in rows]
    sides.fill(rows, ch_rows)

    legacy_sql, ch_sql = _canonical_queries(sides)
    with _pg_connect() as conn:
        legacy = {r[0]: (r[1], int(r[2])) for r in conn.execute(legacy_sql).fetchall()}
    with sides.ch.open() as store:
        ch = {r[0]: (r[1], int(r[2])) for r in store.query_rows(ch_sql)}
    assert len(legacy) == len(rows) and legacy == ch
    t = edge[0]
    assert legacy[t.txn_ref][0] == (
        f"{t.txn_ref}|{int(t.utc.timestamp())}|M0001|5|{t.ccy}|{t.country}|"
        f"{CHANNELS[t.channel_cd]}|{STATUSES[t.status_cd]}"
    )
    jpy = edge[1]  # 00:00:00.999999 in Tokyo is 15:00:00 UTC the day before, in whole seconds; 1 yen is 1
    assert legacy[jpy.txn_ref][0].split("|")[1:5] == [
        str(int(datetime(2024, 3, 4, 15, tzinfo=UTC).timestamp())),
        jpy.merchant,
        "1",
        "JPY",
    ]
    assert legacy[edge[2].txn_ref][0].split("|")[3] == "9999999999"
    # count(DISTINCT …) (used when txn_ref is not a key) agrees with the key-based count
    from pipelines.dualrun.parity.dialects import PgDialect
    from pipelines.dualrun.parity.queries import aggregate_sql, legacy_source_sql

    src = legacy_source_sql(sides.schema, _normalisation(), since=SINCE, until=UNTIL)
    with _pg_connect() as conn:
        exact = conn.execute(aggregate_sql(PgDialect(), src, ("day",), distinct=True, checksum=True)).fetchall()
        keyed = conn.execute(aggregate_sql(PgDialect(), src, ("day",), distinct=False, checksum=True)).fetchall()
    assert sorted(exact) == sorted(keyed) and sum(r[1] for r in exact) == len(rows)
    # the hash is the first 15 hex digits of MD5, as Python computes it too
    import hashlib

    text, value = legacy[t.txn_ref]
    assert value == int(hashlib.md5(text.encode()).hexdigest()[:15], 16)
    assert parity.HASH_BITS == 60


def _canonical_queries(sides: Sides) -> tuple[str, str]:
    from pipelines.dualrun.parity.dialects import ChDialect, PgDialect
    from pipelines.dualrun.parity.queries import clickhouse_source_sql, legacy_source_sql

    pg, chd = PgDialect(), ChDialect()
    legacy_src = legacy_source_sql(sides.schema, _normalisation(), since=SINCE, until=UNTIL)
    with sides.ch.open() as store:
        trim = bool(int(store.query_rows("SELECT count() FROM system.functions WHERE name = 'trimBoth'")[0][0]))
    ch_src = clickhouse_source_sql(sides.ch.database, sides.ch.table, since=SINCE, until=UNTIL, has_trim_both=trim)
    return (
        f"SELECT c_id, {pg.canonical()}, {pg.hash60(pg.canonical())} FROM ({legacy_src}) s",
        f"SELECT c_id, {chd.canonical()}, {chd.hash60(chd.canonical())} FROM ({ch_src}) s",
    )


@pytest.mark.integration
def test_equal_data_is_in_parity(sides: Sides) -> None:
    sides.fill(ROWS, ROWS)
    data = sides.check(expect=0)
    assert data["ok"] is True
    assert data["rows"] == [] and data["segments"] == []
    assert data["totals"]["legacy"]["count"] == data["totals"]["clickhouse"]["count"] == N_ROWS
    assert data["totals"]["legacy"]["amount_minor"] == sum(t.amount_minor for t in ROWS)
    assert [d["day"] for d in data["daily"]] == DAYS
    # days are UTC days: the JPY victim is on 6 March in Tokyo but 5 March in UTC
    by_day = {d["day"]: d["legacy_count"] for d in data["daily"]}
    assert sum(by_day.values()) == N_ROWS
    assert by_day == {day: sum(1 for t in ROWS if t.utc.date().isoformat() == day) for day in DAYS}
    # other dimensions agree too
    for by in ("country,channel,status", "currency"):
        assert sides.check("--by", by, expect=0)["segments_compared"] > 0


def _tamper(kind: str) -> tuple[list[Txn], list[Txn], list[dict[str, Any]]]:
    """(legacy rows, ClickHouse rows, expected findings) for one kind of discrepancy."""
    legacy, ch = list(ROWS), list(ROWS)
    v = ROWS[0]
    if kind == "dropped":
        ch = ch[1:]
        return legacy, ch, [{"kind": "missing_in_clickhouse", "transaction_id": v.txn_ref, "legacy": v.as_contract()}]
    if kind == "duplicated":
        ch = [*ch, ROWS[2]]
        return (
            legacy,
            ch,
            [{"kind": "duplicated", "transaction_id": ROWS[2].txn_ref, "side": "clickhouse", "copies": 2}],
        )
    if kind == "cent":
        ch[1] = replace(ROWS[1], amount_minor=ROWS[1].amount_minor + 1)
        return (
            legacy,
            ch,
            [
                {
                    "kind": "value_mismatch",
                    "transaction_id": ROWS[1].txn_ref,
                    "column": "amount_minor",
                    "legacy": 1005,
                    "clickhouse": 1006,
                }
            ],
        )
    if kind == "timezone":
        # legacy says New York for a wall clock that really was UTC: 23:30 on 4 March → 04:30 on 5 March UTC
        legacy[0] = replace(v, tz="America/New_York")
        return (
            legacy,
            ch,
            [
                {
                    "kind": "value_mismatch",
                    "transaction_id": v.txn_ref,
                    "column": "event_time",
                    "legacy": "2024-03-05T04:30:15Z",
                    "clickhouse": "2024-03-04T23:30:15Z",
                }
            ],
        )
    if kind == "merchant":
        other = "M0039" if ROWS[3].merchant != "M0039" else "M0038"
        ch[3] = replace(ROWS[3], merchant=other)
        return (
            legacy,
            ch,
            [
                {
                    "kind": "value_mismatch",
                    "transaction_id": ROWS[3].txn_ref,
                    "column": "merchant_id",
                    "legacy": ROWS[3].merchant,
                    "clickhouse": other,
                }
            ],
        )
    raise AssertionError(kind)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["dropped", "duplicated", "cent", "timezone", "merchant"])
def test_each_discrepancy_is_found_exactly(sides: Sides, kind: str) -> None:
    legacy, ch, expected = _tamper(kind)
    sides.fill(legacy, ch)
    data = sides.check(expect=1)
    assert data["ok"] is False
    assert data["rows"] == expected
    assert data["rows_truncated"] is False
    assert data["segments"], "a differing segment is listed"


@pytest.mark.integration
def test_all_discrepancies_at_once_and_the_summary(sides: Sides) -> None:
    legacy, ch = list(ROWS), list(ROWS)
    expected: list[dict[str, Any]] = []
    # each kind on its own victim row
    ch = [t for t in ch if t.txn_ref != ROWS[10].txn_ref]  # dropped
    expected.append(
        {"kind": "missing_in_clickhouse", "transaction_id": ROWS[10].txn_ref, "legacy": ROWS[10].as_contract()}
    )
    ch.append(ROWS[11])  # duplicated
    expected.append({"kind": "duplicated", "transaction_id": ROWS[11].txn_ref, "side": "clickhouse", "copies": 2})
    extra = replace(ROWS[12], txn_ref=str(uuid.UUID(int=1, version=4)))  # only in ClickHouse
    ch.append(extra)
    expected.append({"kind": "missing_in_legacy", "transaction_id": extra.txn_ref, "clickhouse": extra.as_contract()})
    ch[1] = replace(ROWS[1], amount_minor=1_006)
    expected.append(
        {
            "kind": "value_mismatch",
            "transaction_id": ROWS[1].txn_ref,
            "column": "amount_minor",
            "legacy": 1005,
            "clickhouse": 1006,
        }
    )
    legacy[0] = replace(ROWS[0], tz="America/New_York")
    expected.append(
        {
            "kind": "value_mismatch",
            "transaction_id": ROWS[0].txn_ref,
            "column": "event_time",
            "legacy": "2024-03-05T04:30:15Z",
            "clickhouse": "2024-03-04T23:30:15Z",
        }
    )
    sides.fill(legacy, ch)

    data = sides.check(expect=1)
    key = lambda r: (r["kind"], r["transaction_id"], r.get("column", ""))  # noqa: E731
    assert sorted(data["rows"], key=key) == sorted(expected, key=key)
    assert data["rows_by_kind"] == {
        "missing_in_clickhouse": 1,
        "duplicated": 1,
        "missing_in_legacy": 1,
        "value_mismatch": 2,
    }
    totals = data["totals"]
    assert totals["count_delta"] == 1  # −1 dropped, +1 duplicate, +1 extra
    # the duplicated row's segment shows one more row, one more amount, the same distinct ids
    dup = ROWS[11]
    seg = next(
        s
        for s in data["segments"]
        if s["key"] == {"day": dup.utc.date().isoformat(), "merchant": dup.merchant, "currency": dup.ccy}
    )
    assert seg["count_delta"] >= 1 and "count" in seg["reasons"]
    # the daily deltas: the zone slip moves one legacy row from 4 to 5 March
    daily = {d["day"]: d for d in data["daily"]}
    assert daily["2024-03-04"]["legacy_count"] == sum(1 for t in legacy if t.utc.date().isoformat() == "2024-03-04")

    # the human output: a summary table with a totals line, then the rows
    text = run_nova("parity-check", "--since", DAYS[0], "--until", "2024-03-07", expect=1, env=sides.env)
    assert "segment(s) differ" in text.stdout and "total" in text.stdout
    assert ROWS[10].txn_ref in text.stdout and "missing_in_clickhouse" in text.stdout
    assert "differ in" in text.stderr  # the ParityMismatch message


@pytest.mark.integration
def test_tolerance_forgives_sums_but_not_counts(sides: Sides) -> None:
    legacy, ch, _ = _tamper("cent")
    sides.fill(legacy, ch)
    sides.check(expect=1)
    data = sides.check("--tolerance-abs", "1", expect=0)
    assert data["rows"] == [] and data["segments_tolerated"] == 1
    sides.check("--tolerance-rel", "0.5", expect=0)
    sides.check("--tolerance-rel", "1e-12", expect=1)

    legacy, ch, _ = _tamper("dropped")
    sides.fill(legacy, ch)
    data = sides.check("--tolerance-abs", "1000000000", expect=1)
    assert [r["kind"] for r in data["rows"]] == ["missing_in_clickhouse"]


@pytest.mark.integration
def test_a_channel_code_added_to_the_mapping_compares_equal(sides: Sides, project: Path) -> None:
    """Codes come from configs/legacy/mapping.yaml: one added there (W → WALLET) is normalised like the rest."""
    mapping = project / "configs" / "legacy" / "mapping.yaml"
    text = mapping.read_text()
    assert text.count("C: CONTACTLESS}") == 1
    mapping.write_text(text.replace("C: CONTACTLESS}", "C: CONTACTLESS, W: WALLET}"))
    rows = [replace(t, channel_cd="W") if i % 7 == 0 else t for i, t in enumerate(ROWS[:3000])]
    wallet = [t.txn_ref for t in rows if t.channel_cd == "W"]
    fill_legacy(sides.schema, rows)
    sides.ch.fill(rows, channels={**CHANNELS, "W": "WALLET"})
    env = {**sides.env, "NOVA_CONFIG": str(project / "configs" / "nova.yaml")}
    args = ("parity-check", "--since", DAYS[0], "--until", "2024-03-07", "--by", "day,channel", "--json")
    data = json.loads(run_nova(*args, expect=0, env=env).stdout)
    assert data["ok"] is True and data["totals"]["clickhouse"]["count"] == len(rows)
    # The repository's mapping does not know W: there the same rows differ, in their channel only.
    data = sides.check("--by", "day,channel", expect=1)
    assert sorted(r["transaction_id"] for r in data["rows"]) == sorted(wallet)
    assert {(r["kind"], r["column"], r["legacy"], r["clickhouse"]) for r in data["rows"]} == {
        ("value_mismatch", "channel", "W", "WALLET")
    }


@pytest.mark.integration
def test_html_report(sides: Sides, tmp_path: Path) -> None:
    legacy, ch, expected = _tamper("timezone")
    sides.fill(legacy, ch)
    out = tmp_path / "reports" / "parity.html"
    run_nova("parity-check", "--since", DAYS[0], "--until", "2024-03-07", "--report", str(out), expect=1, env=sides.env)
    page = out.read_text()
    parsed = _parse_html(page)
    assert parsed.external == [], "the report must not reference anything outside itself"
    assert parsed.svgs == 2 and parsed.bars == 2 * len(DAYS)
    assert {"summary", "chart", "segments", "rows"} <= parsed.ids
    assert expected[0]["transaction_id"] in page and "2024-03-05T04:30:15Z" in page
    assert "<script" not in page.lower()
    # Chromium must render the page (offline) to an image; `make test` installs Debian's chromium.
    png = screenshot(out, tmp_path / "parity.png", height=1600)
    assert png.exists() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.svgs = 0
        self.bars = 0
        self.ids: set[str] = set()
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.svgs += tag == "svg"
        self.bars += tag == "rect" and a.get("class") == "bar"
        if a.get("id"):
            self.ids.add(str(a["id"]))
        for name in ("href", "src", "xmlns", "xlink:href"):
            value = a.get(name) or ""
            if value.startswith(("http:", "https:", "//")):
                self.external.append(f"{tag} {name}={value}")
        if tag in ("script", "link", "iframe", "img"):
            self.external.append(tag)


def _parse_html(page: str) -> _Page:
    parsed = _Page()
    parsed.feed(page)
    assert "http://" not in page and "https://" not in page
    return parsed


@pytest.mark.integration
def test_unreachable_legacy_is_a_clear_failure(tmp_path: Path) -> None:
    result = run_nova(
        "parity-check",
        "--since",
        DAYS[0],
        "--until",
        DAYS[1],
        expect=1,
        env={
            "NOVA_LEGACY__DSN": "postgresql://nova:secret@127.0.0.1:1/legacy",
            "NOVA_CLICKHOUSE__URL": f"chdb://{tmp_path / 'chdb'}",
        },
    )
    assert "postgresql://nova:***@127.0.0.1:1/legacy" in result.stderr and "secret" not in result.stderr
    assert "nova stack up" in result.stderr


@pytest.mark.integration
def test_missing_tables_name_the_fix(legacy_schema: str, tmp_path: Path) -> None:
    env = {"NOVA_CLICKHOUSE__URL": f"chdb://{tmp_path / 'chdb'}", "NOVA_CLICKHOUSE__DATABASE": unique("nodb")}
    result = run_nova(
        "parity-check",
        "--since",
        DAYS[0],
        "--until",
        DAYS[1],
        expect=1,
        env={**env, "NOVA_LEGACY__SCHEMA": unique("noschema")},
    )
    assert "card_txn does not exist" in result.stderr
    result = run_nova(
        "parity-check",
        "--since",
        DAYS[0],
        "--until",
        DAYS[1],
        expect=1,
        env={**env, "NOVA_LEGACY__SCHEMA": legacy_schema},
    )
    assert "does not exist" in result.stderr and "nova provision" in result.stderr


@pytest.mark.integration
def test_api_bisects_large_segments(sides: Sides) -> None:
    """With one segment per day (--by day) each holds ~6.7k rows: found by bisection, not a scan."""
    from pipelines.config import load_settings
    from pipelines.dualrun.parity import run_parity_check

    legacy, ch, expected = _tamper("merchant")
    sides.fill(legacy, ch)
    settings = load_settings(REPO / "configs" / "nova.yaml", environ=sides.env)
    with sides.ch.open() as store:
        result = run_parity_check(
            settings=settings, since=SINCE, until=UNTIL, by=("day",), tolerance_abs=0, tolerance_rel=0.0, store=store
        )
    assert not result.ok
    assert [(r.kind, r.transaction_id, r.column, r.legacy, r.clickhouse) for r in result.rows] == [
        ("value_mismatch", ROWS[3].txn_ref, "merchant_id", ROWS[3].merchant, expected[0]["clickhouse"])
    ]
    assert result.segments[0].reasons == ["checksum"]  # counts and sums agree; only the checksum saw it
    assert result.timings["bisect_rounds"] == 1  # ~6.7k rows → 16 buckets of ~420 in one round
