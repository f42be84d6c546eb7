"""Arrow inserts as `FORMAT Native` over HTTP (pipelines.clickhouse.native_format), on the real server.

Every value written this way must read back exactly as the driver's insert of the same rows does:
the staging insert of every server ingest batch goes through here when `clickhouse.url` has
`?http_port=`. The server is the one `nova stack up --with clickhouse-server` starts; these cases
fail, not skip, when it is unreachable.
"""

from __future__ import annotations

import datetime as dt
import socket
import uuid
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest

from pipelines.clickhouse import Store, open_store
from pipelines.clickhouse.native_format import _strings, encode_block, supported, varint
from pipelines.config import Settings
from pipelines.errors import StoreError
from tests.test_clickhouse_conformance import _server_http_port as _http_port
from tests.test_clickhouse_conformance import _server_url as _url

pytestmark = pytest.mark.server

COLUMNS = [
    ("id", "UInt64"),
    ("s", "String"),
    ("ns", "Nullable(String)"),
    ("i8", "Int8"),
    ("i16", "Int16"),
    ("i32", "Int32"),
    ("i64", "Int64"),
    ("u8", "UInt8"),
    ("u16", "UInt16"),
    ("u32", "UInt32"),
    ("f32", "Float32"),
    ("f64", "Float64"),
    ("nf64", "Nullable(Float64)"),
    ("ts", "DateTime('UTC')"),
    ("d", "Date"),
    ("tags", "Array(String)"),
    ("nums", "Array(Int64)"),
]
LONG = [0, 1, 127, 128, 129, 16383, 16384, 70_000]  # varint boundaries: 1, 2 and 3 length bytes


def _table(n: int) -> pa.Table:
    rng = np.random.default_rng(7)
    s = ["x" * LONG[i % len(LONG)] if i % 11 == 0 else f"välue-{i}-€" for i in range(n)]
    return pa.table(
        {
            "id": pa.array(range(n), pa.uint64()),
            "s": pa.array(s),
            "ns": pa.array([None if i % 3 == 0 else f"n{i}" * (i % 5) for i in range(n)]),
            "i8": pa.array([(-1) ** i * (i % 128) for i in range(n)], pa.int8()),
            "i16": pa.array([-(i * 37 % 32768) for i in range(n)], pa.int16()),
            "i32": pa.array(rng.integers(-(2**31), 2**31 - 1, n), pa.int32()),
            "i64": pa.array(rng.integers(-(2**62), 2**62, n), pa.int64()),
            "u8": pa.array([i % 256 for i in range(n)], pa.uint8()),
            "u16": pa.array([i % 65536 for i in range(n)], pa.uint16()),
            "u32": pa.array(rng.integers(0, 2**32 - 1, n), pa.uint32()),
            "f32": pa.array(rng.normal(size=n), pa.float32()),
            "f64": pa.array(rng.normal(size=n) * 1e9, pa.float64()),
            "nf64": pa.array([None if i % 4 == 1 else i / 7 for i in range(n)], pa.float64()),
            "ts": pa.array([1_700_000_000 + i * 61 for i in range(n)], pa.timestamp("s", tz="UTC")),
            "d": pa.array([dt.date(2026, 1, 1) + dt.timedelta(days=i % 400) for i in range(n)], pa.date32()),
            "tags": pa.array([[f"t{j}" * (j + 1) for j in range(i % 4)] for i in range(n)], pa.list_(pa.string())),
            "nums": pa.array([list(range(i % 3)) for i in range(n)], pa.list_(pa.int64())),
        }
    )


@pytest.fixture
def stores() -> Iterator[tuple[Store, Store]]:
    """(driver store, HTTP store) on one fresh database of the stack's server."""
    settings = Settings()
    database = f"nova_native_{uuid.uuid4().hex[:8]}"
    url = _url(settings)
    driver = open_store(settings, url=url, database=database)
    http = open_store(settings, url=f"{url}?http_port={_http_port(settings)}", database=database)
    driver.ensure_database()
    try:
        yield driver, http
    finally:
        driver.execute(f"DROP DATABASE IF EXISTS `{database}`")
        driver.close()
        http.close()


def _create(store: Store, name: str) -> None:
    cols = ", ".join(f"`{c}` {t}" for c, t in COLUMNS)
    store.execute(f"CREATE TABLE {name} ({cols}) ENGINE = MergeTree ORDER BY id")


def _read(store: Store, name: str) -> list[tuple[object, ...]]:
    return store.query_rows(f"SELECT * FROM {name} ORDER BY id")


def test_every_supported_type_reads_back_as_the_drivers_insert_does(stores: tuple[Store, Store]) -> None:
    driver, http = stores
    table = _table(3_000)
    # a slice (non-zero Arrow offsets) and several chunks: the buffers are read from where they start
    sliced = pa.concat_tables([table.slice(100, 900), table.slice(1000, 2000)])
    for name in ("via_driver", "via_http"):
        _create(driver, name)
    assert encode_block(sliced, [t for _, t in COLUMNS]) is not None
    assert driver.insert_arrow("via_driver", sliced) == 2_900
    assert http.insert_arrow("via_http", sliced) == 2_900
    by_driver, by_http = _read(driver, "via_driver"), _read(driver, "via_http")
    assert len(by_http) == 2_900
    assert by_http == by_driver
    longest = driver.query_scalar("SELECT max(length(s)) FROM via_http")
    assert longest == 70_000
    row = driver.query_rows("SELECT s, ns, tags, nums, ts, d FROM via_http WHERE id = 101")[0]
    assert row[0] == "välue-101-€" and row[1] == "n101" * 1 and row[2] == ["t0"] and row[3] == [0, 1]
    assert row[4] == dt.datetime.fromtimestamp(1_700_000_000 + 101 * 61, dt.UTC).replace(tzinfo=row[4].tzinfo)
    assert driver.query_scalar("SELECT countIf(ns IS NULL) FROM via_http") == sum(
        1 for i in list(range(100, 1000)) + list(range(1000, 3000)) if i % 3 == 0
    )


def test_columns_of_other_types_go_through_the_driver(stores: tuple[Store, Store]) -> None:
    driver, http = stores
    assert not supported("Enum8('a' = 1, 'b' = 2)") and not supported("Decimal(18, 2)") and not supported("UUID")
    assert encode_block(pa.table({"e": ["a"]}), ["Enum8('a' = 1, 'b' = 2)"]) is None
    driver.execute("CREATE TABLE mixed (id UInt64, e Enum8('a' = 1, 'b' = 2), s String) ENGINE = Memory")
    http.insert_arrow("mixed", pa.table({"id": pa.array([1, 2], pa.uint64()), "e": ["b", "a"], "s": ["x", "y"]}))
    assert driver.query_rows("SELECT id, e, s FROM mixed ORDER BY id") == [(1, "b", "x"), (2, "a", "y")]


def test_a_table_dropped_meanwhile_is_the_servers_unknown_table_error(stores: tuple[Store, Store]) -> None:
    """The ingest fence recreates its staging table on code 60: the HTTP path must report it as such."""
    driver, http = stores
    _create(driver, "gone")
    http.insert_arrow("gone", _table(10))  # learns the columns
    driver.execute("DROP TABLE gone")
    with pytest.raises(StoreError) as info:
        http.insert_arrow("gone", _table(10))
    assert info.value.code == 60 and "gone" in str(info.value)


def test_a_closed_http_port_is_a_retryable_error_naming_the_option(stores: tuple[Store, Store]) -> None:
    driver, _ = stores
    _create(driver, "t")
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings()
    wrong = open_store(settings, url=f"{_url(settings)}?http_port={port}", database=driver.database)
    try:
        with pytest.raises(StoreError) as info:
            wrong.insert_arrow("t", _table(5))
        assert info.value.retryable and "http_port" in (info.value.hint or "")
    finally:
        wrong.close()
    assert driver.query_scalar("SELECT count() FROM t") == 0


def test_a_bad_http_port_option_is_refused() -> None:
    settings = Settings()
    with pytest.raises(StoreError, match="http_port"):
        open_store(settings, url=f"{_url(settings)}?http_port=eighty", database="default")


@pytest.mark.parametrize("lengths", [[0, 5, 127], [128, 16383, 16384, 2_097_152], []])
def test_string_lengths_are_varints(lengths: list[int]) -> None:
    values = ["é" * (n // 2) + "a" * (n % 2) for n in lengths]
    expected = b"".join(varint(len(v.encode())) + v.encode() for v in values)
    assert _strings(pa.array(values, pa.string())) == expected
    assert varint(300) == b"\xac\x02" and varint(0) == b"\x00"
