"""The ClickHouse layer: one `Store` over the embedded engine (chdb) and clickhouse-server.

    from pipelines.clickhouse import open_store, render_type

    with open_store(settings) as store:
        store.ensure_database()
        store.execute(f"CREATE TABLE IF NOT EXISTS t (ts {render_type('DateTime64(3, \\'UTC\\')', store.caps)}) ...")
        store.insert_arrow("t", arrow_table)
        store.query_rows("SELECT count() FROM t WHERE ts >= %(since)s", {"since": since})

Modules: `capabilities` (version → features, `render_type`), `sql` (parameters, identifiers),
`chtypes` (ClickHouse ↔ Arrow types), `base` (`Store`), `chdb_backend`, `native_backend`, `store`
(`open_store`). chdb, clickhouse-driver and pyarrow are imported only when a store is opened.
"""

from pipelines.clickhouse.base import Store
from pipelines.clickhouse.capabilities import FEATURES, Capabilities, render_type
from pipelines.clickhouse.store import open_store, server_problem

__all__ = ["FEATURES", "Capabilities", "Store", "open_store", "render_type", "server_problem"]
