"""One suite, two backends: the embedded store (chdb) and clickhouse-server (native protocol).

Every case in `TestConformance` runs against both. The `native` cases need the server that
`nova stack up --with clickhouse-server` starts (127.0.0.1:19000, Debian's 18.16 here); they
fail — not skip — when it is unreachable. Point them elsewhere with
NOVA_TEST_CLICKHOUSE_URL=clickhouse://user:pass@host:port/, or deselect them with `-m "not server"`.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap
import uuid
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pytest

from pipelines.clickhouse import Capabilities, Store, open_store, render_type
from pipelines.clickhouse.sql import literal, split_table
from pipelines.config import Settings
from pipelines.errors import StoreError

UTC = dt.UTC


def _settings(root: Path) -> Settings:
    settings = Settings()
    settings.root = root
    return settings


def _server_url(settings: Settings) -> str:
    explicit = os.environ.get("NOVA_TEST_CLICKHOUSE_URL")
    if explicit:
        return explicit
    configured = os.environ.get("NOVA_CLICKHOUSE__URL", "")
    if configured.startswith("clickhouse://"):
        return configured
    return f"clickhouse://default:@127.0.0.1:{settings.stack.clickhouse_tcp_port}/"


def _server_http_port(settings: Settings) -> int:
    return int(os.environ.get("NOVA_TEST_CLICKHOUSE_HTTP_PORT") or settings.stack.clickhouse_http_port)


@pytest.fixture(
    scope="class",
    params=[
        pytest.param("chdb", id="chdb"),
        pytest.param("native", id="native", marks=pytest.mark.server),
        # the same server, Arrow inserts as Native over its HTTP port (pipelines.clickhouse.native_format)
        pytest.param("native_http", id="native-http", marks=pytest.mark.server),
    ],
)
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp(f"ch-{request.param}")
    settings = _settings(root)
    database = f"nova_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    if request.param == "chdb":
        st = open_store(settings, url=f"chdb://{root / 'chdb'}", database=database)
    else:
        url = _server_url(settings)
        if request.param == "native_http":
            url += ("&" if "?" in url else "?") + f"http_port={_server_http_port(settings)}"
        try:
            st = open_store(settings, url=url, database=database)
        except StoreError as exc:
            pytest.fail(
                f"clickhouse-server is not reachable at {url}: {exc}\n"
                "CI starts it; locally run `nova stack up --with clickhouse-server` "
                "(or set NOVA_TEST_CLICKHOUSE_URL), or deselect these cases with -m 'not server'",
                pytrace=False,
            )
    assert not st.database_exists(), "a fresh database name must not exist yet"
    assert st.ensure_database() is True
    try:
        yield st
    finally:
        try:
            st.execute(f"DROP DATABASE IF EXISTS `{database}`")
        finally:
            st.close()


@pytest.fixture
def table_name(request: pytest.FixtureRequest) -> str:
    return f"t_{request.node.originalname}_{uuid.uuid4().hex[:6]}"


# Canonical nova column types, as provision would declare them.
CANONICAL = [
    ("transaction_id", "UUID"),
    ("event_time", "DateTime64(3, 'UTC')"),
    ("card_id", "String"),
    ("merchant_category", "LowCardinality(String)"),
    ("amount_minor", "Int64"),
    ("amount_reporting", "Decimal(18, 2)"),
    ("currency", "LowCardinality(String)"),
    ("channel", "Enum8('POS' = 1, 'ECOM' = 2, 'ATM' = 3)"),
    ("device_id", "Nullable(String)"),
    ("latitude", "Nullable(Float64)"),
    ("fraud_score", "Float32"),
    ("event_date", "Date"),
    ("kafka_offset", "UInt64"),
]


def _create(store: Store, name: str, engine: str = "MergeTree ORDER BY (card_id, event_time)") -> None:
    columns = ", ".join(f"`{c}` {render_type(t, store.caps)}" for c, t in CANONICAL)
    store.execute(f"CREATE TABLE {name} ({columns}) ENGINE = {engine}")


def _batch(n: int, *, start: int = 0) -> pa.Table:
    base_ms = 1_700_000_000_000
    ids = [uuid.UUID(int=(i + 1) * 7919 + (1 << 100)) for i in range(start, start + n)]
    return pa.table(
        {
            "transaction_id": pa.array([str(u) for u in ids]),
            "event_time": pa.array([base_ms + i * 37 for i in range(start, start + n)], pa.timestamp("ms", tz="UTC")),
            "card_id": pa.array([f"card-{i % 997}" for i in range(start, start + n)]),
            "merchant_category": pa.array([f"{5000 + i % 40:04d}" for i in range(start, start + n)]),
            "amount_minor": pa.array([(i % 10_000) + 1 for i in range(start, start + n)], pa.int64()),
            "amount_reporting": pa.array(
                [Decimal(i % 10_000) / 100 for i in range(start, start + n)], pa.decimal128(18, 2)
            ),
            "currency": pa.array(["EUR", "USD", "GBP"][i % 3] for i in range(start, start + n)),
            "channel": pa.array(["POS", "ECOM", "ATM"][i % 3] for i in range(start, start + n)),
            "device_id": pa.array([None if i % 4 == 0 else f"dev-{i % 50}" for i in range(start, start + n)]),
            "latitude": pa.array([None if i % 5 == 0 else 48.0 + (i % 100) / 100 for i in range(start, start + n)]),
            "fraud_score": pa.array([(i % 100) / 100 for i in range(start, start + n)], pa.float32()),
            "event_date": pa.array([dt.date(2023, 11, 14)] * n, pa.date32()),
            "kafka_offset": pa.array(range(start, start + n), pa.uint64()),
        }
    )


def _compact(t: str) -> str:
    return t.replace(" ", "")


class TestConformance:
    """The same behaviour from both backends."""

    def test_version_and_capabilities(self, store: Store) -> None:
        version_text = store.query_scalar("SELECT version()")
        assert store.caps.version_text == version_text
        assert store.caps.version >= (18, 16)
        assert store.backend in ("chdb", "native")
        for feature in ("datetime64", "ttl", "storage_policies", "dedup_token", "parquet", "map_type"):
            assert getattr(store.caps, feature) == store.caps.has(feature)
        assert store.caps.datetime64 == (store.caps.version >= (20, 1))
        assert store.caps.knows_setting("max_threads")
        if store.backend == "chdb":
            assert store.caps.version >= (24, 1)
            assert store.caps.datetime64 and store.caps.ttl and store.caps.dedup_token and store.caps.low_cardinality

    def test_unqualified_names_resolve_in_the_database(self, store: Store, table_name: str) -> None:
        assert store.query_scalar("SELECT currentDatabase()") == store.database
        store.execute(f"CREATE TABLE {table_name} (x UInt8) ENGINE = Memory")
        assert store.table_exists(table_name)
        assert store.table_exists(f"{store.database}.{table_name}")
        assert (
            store.query_scalar(
                "SELECT count() FROM system.tables WHERE database = %(db)s AND name = %(t)s",
                {"db": store.database, "t": table_name},
            )
            == 1
        )

    def test_create_table_from_rendered_ddl(self, store: Store, table_name: str) -> None:
        _create(store, table_name)
        got = store.table_columns(table_name)
        assert [n for n, _ in got] == [n for n, _ in CANONICAL]
        for (name, declared), (_, actual) in zip(CANONICAL, got, strict=True):
            assert _compact(actual) == _compact(render_type(declared, store.caps)), name
        assert store.table_columns("no_such_table") == []

    def test_columnar_insert_100k_rows(self, store: Store, table_name: str) -> None:
        _create(store, table_name)
        n = 100_000
        batch = _batch(n)
        assert store.insert_arrow(table_name, batch) == n
        count, total, cards, nulls = store.query_rows(
            f"SELECT count(), sum(amount_minor), uniqExact(card_id), countIf(isNull(device_id)) FROM {table_name}"
        )[0]
        assert count == n
        assert total == sum(batch.column("amount_minor").to_pylist())
        assert cards == len(set(batch.column("card_id").to_pylist()))
        assert nulls == batch.column("device_id").null_count
        assert store.query_scalar(f"SELECT sum(amount_reporting) FROM {table_name}") == sum(
            batch.column("amount_reporting").to_pylist()
        )

    def test_insert_columns_from_python_values(self, store: Store, table_name: str) -> None:
        _create(store, table_name)
        rows = _batch(1_000, start=5).to_pylist()
        columns = {name: [r[name] for r in rows] for name, _ in CANONICAL}
        columns["transaction_id"] = [uuid.UUID(v) for v in columns["transaction_id"]]
        assert store.insert_columns(table_name, columns) == 1_000
        got = store.query_dicts(f"SELECT * FROM {table_name} ORDER BY kafka_offset LIMIT 1")[0]
        first = rows[0]
        assert got["transaction_id"] == uuid.UUID(first["transaction_id"])
        assert got["card_id"] == first["card_id"] and got["channel"] == first["channel"]
        assert got["device_id"] == first["device_id"] and got["event_date"] == first["event_date"]
        assert got["amount_reporting"] == first["amount_reporting"]
        with pytest.raises(StoreError, match="no column 'nope'"):
            store.insert_columns(table_name, {"nope": [1]})
        with pytest.raises(StoreError, match="different lengths"):
            store.insert_columns(table_name, {"card_id": ["a"], "amount_minor": [1, 2]})

    def test_query_arrow_types(self, store: Store, table_name: str) -> None:
        _create(store, table_name)
        store.insert_arrow(table_name, _batch(10))
        table = store.query_arrow(f"SELECT * FROM {table_name} ORDER BY kafka_offset")
        assert table.num_rows == 10
        ts_unit = "ms" if store.caps.datetime64 else "s"
        expected = pa.schema(
            [
                pa.field("transaction_id", pa.uuid(), nullable=False),
                pa.field("event_time", pa.timestamp(ts_unit, tz="UTC"), nullable=False),
                pa.field("card_id", pa.string(), nullable=False),
                pa.field("merchant_category", pa.string(), nullable=False),
                pa.field("amount_minor", pa.int64(), nullable=False),
                pa.field("amount_reporting", pa.decimal128(18, 2), nullable=False),
                pa.field("currency", pa.string(), nullable=False),
                pa.field("channel", pa.string(), nullable=False),
                pa.field("device_id", pa.string(), nullable=True),
                pa.field("latitude", pa.float64(), nullable=True),
                pa.field("fraud_score", pa.float32(), nullable=False),
                pa.field("event_date", pa.date32(), nullable=False),
                pa.field("kafka_offset", pa.uint64(), nullable=False),
            ]
        )
        assert table.schema.equals(expected), f"{table.schema}\n!=\n{expected}"
        assert table.column("channel").to_pylist()[:3] == ["POS", "ECOM", "ATM"]
        empty = store.query_arrow(f"SELECT card_id, event_time FROM {table_name} WHERE 0")
        assert empty.num_rows == 0 and empty.column_names == ["card_id", "event_time"]
        assert pa.types.is_timestamp(empty.schema.field("event_time").type)
        plain = store.query_arrow("SELECT toDateTime('2024-01-02 03:04:05', 'UTC') AS t, toUInt32(7) AS u")
        assert plain.schema.field("t").type == pa.timestamp("s", tz="UTC")
        assert plain.schema.field("u").type == pa.uint32()
        assert plain.to_pylist() == [{"t": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), "u": 7}]

    @pytest.mark.parametrize(
        "value",
        [
            "it's",
            'say "hi"',
            "back\\slash",
            "trailing\\",
            "\\'",
            "new\nline\ttab\rcr",
            "naïve café — Zürich ✓ 東京 🚀",
            "%(not_a_param)s 100%",
            "",
            "nul\0byte",
        ],
    )
    def test_string_params_round_trip(self, store: Store, value: str) -> None:
        assert store.query_scalar("SELECT %(v)s", {"v": value}) == value
        assert store.query_scalar("SELECT length(%(v)s) = lengthUTF8(%(v)s) OR 1", {"v": value}) == 1

    def test_params_of_other_types(self, store: Store, table_name: str) -> None:
        u = uuid.UUID("12345678-1234-5678-1234-567812345678")
        row = store.query_rows(
            "SELECT %(n)s, %(i)s, %(f)s, %(d)s, %(day)s, %(u)s, %(b)s, %(ts)s, %(big)s",
            {
                "n": None,
                "i": -42,
                "f": 1.5,
                "d": Decimal("12.34"),
                "day": dt.date(2024, 2, 29),
                "u": u,
                "b": True,
                "ts": dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
                "big": 2**63,
            },
        )[0]
        assert row[0] is None and row[1] == -42 and row[2] == 1.5 and Decimal(str(row[3])) == Decimal("12.34")
        assert row[4] == dt.date(2024, 2, 29) and row[5] == u and row[6] == 1 and row[8] == 2**63
        assert row[7] == dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
        # An aware datetime in another zone is the same instant.
        plus2 = dt.timezone(dt.timedelta(hours=2))
        assert (
            store.query_scalar(
                "SELECT %(a)s = %(b)s", {"a": dt.datetime(2024, 1, 2, 5, 4, 5, tzinfo=plus2), "b": row[7]}
            )
            == 1
        )
        # Tuples suit IN; values are filtered as data, never as SQL.
        _create(store, table_name)
        store.insert_arrow(table_name, _batch(30))
        hits = store.query_scalar(
            f"SELECT count() FROM {table_name} WHERE card_id IN %(cards)s",
            {"cards": ("card-1", "card-2", "x') OR 1=1 --")},
        )
        assert hits == 2
        assert store.query_scalar("SELECT has(%(xs)s, 'b')", {"xs": ["a", "b"]}) == 1
        with pytest.raises(StoreError, match="missing"):
            store.query_rows("SELECT %(missing)s", {"other": 1})

    def test_errors_become_store_errors(self, store: Store) -> None:
        with pytest.raises(StoreError) as bad_sql:
            store.execute("SELEC 1")
        assert bad_sql.value.code == 62 and "Syntax error" in bad_sql.value.message
        assert not bad_sql.value.retryable
        with pytest.raises(StoreError) as unknown_table:
            store.query_rows("SELECT * FROM no_such_table_xyz")
        assert unknown_table.value.code == 60 and "no_such_table_xyz" in unknown_table.value.message
        with pytest.raises(StoreError) as unknown_db:
            store.query_arrow("SELECT * FROM no_such_db_xyz.t")
        assert unknown_db.value.code == 81 and "no_such_db_xyz" in unknown_db.value.message
        with pytest.raises(StoreError, match="does not exist"):
            store.insert_columns("no_such_table_xyz", {"x": [1]})
        assert "Stack trace" not in unknown_table.value.message
        # The connection is still usable after errors.
        assert store.query_scalar("SELECT 1") == 1

    def test_missing_feature_names_the_version(self, store: Store, table_name: str) -> None:
        ttl_sql = f"CREATE TABLE {table_name} (d Date, x UInt8) ENGINE = MergeTree ORDER BY x TTL d + INTERVAL 30 DAY"
        if store.caps.ttl:
            store.caps.require("ttl")  # does not raise
            store.execute(ttl_sql)
            assert store.table_exists(table_name)
        else:
            with pytest.raises(StoreError) as exc:
                store.caps.require("ttl")
            assert "19.6" in str(exc.value) and store.caps.version_text in str(exc.value)
            with pytest.raises(StoreError):
                store.execute(ttl_sql)  # the server refuses it too, in its own words

    def test_dedup_token_is_honoured_or_refused(self, store: Store, table_name: str) -> None:
        store.execute(
            f"CREATE TABLE {table_name} (k UInt32, v String) ENGINE = MergeTree ORDER BY k"
            + (" SETTINGS non_replicated_deduplication_window = 100" if store.caps.dedup_token else "")
        )
        rows = {"k": [1, 2, 3], "v": ["a", "b", "c"]}
        token = {"insert_deduplication_token": "batch-0-0-2"}
        if store.caps.dedup_token:
            store.insert_columns(table_name, rows, settings=token)
            store.insert_columns(table_name, rows, settings=token)  # a retry of the same batch
            assert store.query_scalar(f"SELECT count() FROM {table_name}") == 3
        else:
            # clickhouse-driver would drop the setting silently and insert twice: refused instead.
            with pytest.raises(StoreError, match=r"22\.2"):
                store.insert_columns(table_name, rows, settings=token)
            assert store.query_scalar(f"SELECT count() FROM {table_name}") == 0
        with pytest.raises(StoreError):
            store.execute("SELECT 1", settings={"no_such_setting_xyz": 1})

    def test_timestamps_round_trip(self, store: Store, table_name: str) -> None:
        ts_type = render_type("DateTime64(3, 'UTC')", store.caps)
        store.execute(f"CREATE TABLE {table_name} (k UInt32, ts {ts_type}, ts_ms Int64) ENGINE = MergeTree ORDER BY k")
        millis = [1_700_000_000_123, 1_700_000_001_999, 1_700_000_002_000]
        store.insert_arrow(
            table_name,
            pa.table(
                {
                    "k": pa.array([0, 1, 2], pa.uint32()),
                    "ts": pa.array(millis, pa.timestamp("ms", tz="UTC")),
                    "ts_ms": pa.array(millis, pa.int64()),
                }
            ),
        )
        aware = dt.datetime(2024, 5, 6, 7, 8, 9, 456_000, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
        store.insert_columns(table_name, {"k": [3], "ts": [aware], "ts_ms": [int(aware.timestamp() * 1000)]})
        got = store.query_arrow(f"SELECT ts, ts_ms FROM {table_name} ORDER BY k")
        stored_ms = got.column("ts").cast(pa.int64()).to_pylist()
        exact = [*millis, int(aware.timestamp() * 1000)]
        if store.caps.datetime64:
            assert stored_ms == exact
        else:
            # DateTime keeps seconds: the millisecond part is cut; ts_ms keeps it everywhere.
            assert [v * 1000 for v in stored_ms] == [m // 1000 * 1000 for m in exact]
        assert got.column("ts_ms").to_pylist() == exact
        first = store.query_rows(f"SELECT ts FROM {table_name} WHERE k = 0")[0][0]
        assert first.tzinfo is not None
        assert first.replace(microsecond=0) == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
        since = dt.datetime(2023, 11, 14, 22, 13, 21, tzinfo=UTC)
        assert store.query_scalar(f"SELECT count() FROM {table_name} WHERE ts >= %(since)s", {"since": since}) == 3

    def test_replacing_merge_tree_and_argmax(self, store: Store, table_name: str) -> None:
        store.execute(
            f"CREATE TABLE {table_name} (id String, status String, version UInt64) "
            "ENGINE = ReplacingMergeTree(version) ORDER BY id"
        )
        store.insert_columns(table_name, {"id": ["a", "b"], "status": ["AUTHORIZED", "AUTHORIZED"], "version": [1, 1]})
        store.insert_columns(table_name, {"id": ["a"], "status": ["CAPTURED"], "version": [2]})
        store.insert_columns(table_name, {"id": ["a"], "status": ["STALE"], "version": [0]})
        latest = dict(store.query_rows(f"SELECT id, argMax(status, version) FROM {table_name} GROUP BY id ORDER BY id"))
        assert latest == {"a": "CAPTURED", "b": "AUTHORIZED"}
        store.execute(f"OPTIMIZE TABLE {table_name} FINAL")
        assert store.query_rows(f"SELECT id, status FROM {table_name} ORDER BY id") == [
            ("a", "CAPTURED"),
            ("b", "AUTHORIZED"),
        ]

    def test_materialized_view_to_summing_merge_tree(self, store: Store, table_name: str) -> None:
        source, target, view = f"{table_name}_src", f"{table_name}_sum", f"{table_name}_mv"
        store.execute(f"CREATE TABLE {source} (merchant String, amount Int64) ENGINE = MergeTree ORDER BY merchant")
        store.execute(
            f"CREATE TABLE {target} (merchant String, total Int64, n UInt64) "
            "ENGINE = SummingMergeTree ORDER BY merchant"
        )
        store.execute(
            f"CREATE MATERIALIZED VIEW {view} TO {target} AS "
            f"SELECT merchant, sum(amount) AS total, count() AS n FROM {source} GROUP BY merchant"
        )
        store.insert_columns(source, {"merchant": ["m1", "m2", "m1"], "amount": [10, 5, 7]})
        store.insert_arrow(source, pa.table({"merchant": ["m2", "m3"], "amount": pa.array([1, 100], pa.int64())}))
        totals = store.query_rows(
            f"SELECT merchant, sum(total), sum(n) FROM {target} GROUP BY merchant ORDER BY merchant"
        )
        assert totals == [("m1", 17, 2), ("m2", 6, 2), ("m3", 100, 1)]
        assert store.table_exists(view)


# ---- backend-specific behaviour ------------------------------------------------------------------


def test_refused_connection_is_retryable_with_a_fix(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as exc:
        open_store(_settings(tmp_path), url="clickhouse://default:@127.0.0.1:1/nova")
    assert exc.value.retryable
    assert "127.0.0.1:1" in exc.value.message and "refused" in exc.value.message
    assert "nova stack up --with clickhouse-server" in (exc.value.hint or "")


def _in_subprocess(code: str) -> str:
    """Run `code` in a fresh interpreter: chdb hosts one path per process, and this one may host another."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_chdb_path_held_by_another_process(tmp_path: Path) -> None:
    path = tmp_path / "held"
    holder = f"""
        import sys
        from chdb.state import sqlitelike
        conn = sqlitelike.connect({str(path)!r})
        conn.query("SELECT 1")
        print("ready", flush=True)
        sys.stdin.readline()
        conn.close()
        """
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(holder)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
            with pytest.raises(StoreError) as exc:
                open_store(_settings(tmp_path), url=f"chdb://{path}")
            message = str(exc.value)
            assert str(path) in message and f"process {proc.pid}" in message
            assert "nova ingest" in message and "clickhouse-server" in message
            assert not exc.value.retryable
        finally:
            assert proc.stdin is not None
            proc.stdin.write("\n")
            proc.stdin.flush()
            proc.wait(timeout=60)
    # Once the holder is gone the path opens again.
    out = _in_subprocess(
        f"""
        from pathlib import Path
        from pipelines.clickhouse import open_store
        from pipelines.config import Settings
        settings = Settings()
        settings.root = Path({str(tmp_path)!r})
        with open_store(settings, url="chdb://held") as st:
            print(st.query_scalar("SELECT 41 + 1"))
        """
    )
    assert out.strip() == "42"


def test_chdb_relative_path_resolves_under_the_project_root(tmp_path: Path) -> None:
    out = _in_subprocess(
        f"""
        import json
        from pathlib import Path
        from pipelines.clickhouse import open_store
        from pipelines.config import Settings
        settings = Settings()
        settings.root = Path({str(tmp_path)!r})
        with open_store(settings, url="chdb://state/chdb", database="nova") as st:
            st.ensure_database()
            st.execute("CREATE TABLE t (x UInt8) ENGINE = MergeTree ORDER BY x")
            st.insert_columns("t", {{"x": [1, 2]}})
            paths = dict(st.query_rows(
                "SELECT name, value FROM system.server_settings WHERE name IN ('tmp_path', 'user_files_path')"
            ))
            print(json.dumps({{"path": str(st.path), "count": st.query_scalar("SELECT count() FROM t"), **paths}}))
        """
    )
    got = json.loads(out)
    assert got["path"] == str((tmp_path / "state" / "chdb").resolve())
    assert got["count"] == 2
    # The engine's scratch directories live under the store's path, not /var/lib/clickhouse.
    assert got["tmp_path"].startswith(got["path"]) and got["user_files_path"].startswith(got["path"])
    assert (tmp_path / "state" / "chdb" / "metadata").is_dir()


# ---- pure units ------------------------------------------------------------------------------------

OLD = Capabilities.from_version("18.16.1")
NEW = Capabilities.from_version("26.9.2.1")


@pytest.mark.parametrize(
    ("canonical", "old", "new"),
    [
        ("DateTime64(3, 'UTC')", "DateTime('UTC')", "DateTime64(3, 'UTC')"),
        ("DateTime64(6)", "DateTime", "DateTime64(6)"),
        ("LowCardinality(String)", "String", "LowCardinality(String)"),
        ("LowCardinality(Nullable(String))", "Nullable(String)", "LowCardinality(Nullable(String))"),
        ("Nullable(DateTime64(3, 'UTC'))", "Nullable(DateTime('UTC'))", "Nullable(DateTime64(3, 'UTC'))"),
        ("Array(LowCardinality(String))", "Array(String)", "Array(LowCardinality(String))"),
        ("Tuple(a DateTime64(3), b String)", "Tuple(a DateTime, b String)", "Tuple(a DateTime64(3), b String)"),
        ("UUID", "UUID", "UUID"),
        ("Decimal(18, 2)", "Decimal(18, 2)", "Decimal(18, 2)"),
        ("Enum8('a, b' = 1, 'c' = 2)", "Enum8('a, b' = 1, 'c' = 2)", "Enum8('a, b' = 1, 'c' = 2)"),
        ("Bool", "UInt8", "Bool"),
    ],
)
def test_render_type(canonical: str, old: str, new: str) -> None:
    assert render_type(canonical, OLD) == old
    assert render_type(canonical, NEW) == new


def test_capabilities_of_old_and_new_servers() -> None:
    assert not (OLD.datetime64 or OLD.ttl or OLD.storage_policies or OLD.dedup_token or OLD.map_type)
    assert not (OLD.parquet or OLD.low_cardinality or OLD.skip_indices or OLD.if_not_exists_column)
    assert OLD.low_cardinality_setting == "allow_experimental_low_cardinality_type"
    assert NEW.datetime64 and NEW.ttl and NEW.storage_policies and NEW.dedup_token and NEW.map_type
    assert Capabilities.from_version("19.6.2.11").ttl and not Capabilities.from_version("19.5.4").ttl
    assert Capabilities.from_version("22.2.1").dedup_token and not Capabilities.from_version("22.1.9").dedup_token
    with pytest.raises(StoreError, match=r"the Map type needs ClickHouse ≥ 21\.8; this server is 18\.16\.1"):
        render_type("Map(String, UInt8)", OLD)
    with pytest.raises(StoreError, match=r"≥ 22\.2; this server is 18\.16\.1"):
        OLD.require("dedup_token")
    with pytest.raises(ValueError, match="unknown ClickHouse feature"):
        OLD.require("warp_drive")
    old_with_settings = Capabilities.from_version("18.16.1", settings={"max_threads"})
    with pytest.raises(StoreError, match=r"22\.2"):
        old_with_settings.require_settings({"insert_deduplication_token": "x"})
    with pytest.raises(StoreError, match="does not know the setting 'foo'"):
        old_with_settings.require_settings(["foo"])


def test_literals_and_table_names() -> None:
    assert literal("a'b\\c\n") == "'a\\'b\\\\c\\n'"
    assert literal(None) == "NULL" and literal(True) == "1" and literal(float("nan")) == "nan"
    assert literal(("a", 1)) == "('a', 1)" and literal([1, 2]) == "[1, 2]"
    assert literal(dt.datetime(2024, 1, 1, tzinfo=UTC)) == "toDateTime('2024-01-01 00:00:00', 'UTC')"
    assert literal(dt.datetime(2024, 1, 1, 0, 0, 0, 5000)) == "toDateTime64('2024-01-01 00:00:00.005000', 6, 'UTC')"
    assert (
        literal(dt.datetime(2024, 1, 1, 0, 0, 0, 5000), datetime64=False) == "toDateTime('2024-01-01 00:00:00', 'UTC')"
    )
    with pytest.raises(StoreError):
        literal(object())
    assert split_table("t", "nova") == ("nova", "t")
    assert split_table("db.t", "nova") == ("db", "t")
    assert split_table("`my.db`.`t`", "nova") == ("my.db", "t")
