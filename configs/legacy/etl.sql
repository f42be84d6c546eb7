-- The nightly ETL: rebuild daily_merchant_summary for the business dates [{from_date}, {to_date}).
--
-- business_date is the UTC date of the event; the event's UTC time is `txn_ts_local AT TIME ZONE txn_tz`.
-- Every row counts, whatever its status (the legacy report sums the ledger as loaded).
-- Runs in one transaction (the caller's): delete the dates, insert them again — re-running is harmless.
--
-- Placeholders: {schema} (quoted identifier), {from_date} / {to_date} (date literals).
-- The range on txn_ts_local is widened by a day each side so the index on txn_ts_local narrows
-- the scan (no zone is more than 14 h from UTC); the exact UTC test follows.

DELETE FROM {schema}.daily_merchant_summary
 WHERE business_date >= {from_date} AND business_date < {to_date};

INSERT INTO {schema}.daily_merchant_summary (business_date, merchant_code, ccy, txn_count, amount_total)
SELECT ((t.txn_ts_local AT TIME ZONE t.txn_tz) AT TIME ZONE 'UTC')::date AS business_date,
       t.merchant_code,
       t.ccy,
       count(*)::integer,
       sum(t.amount)
  FROM {schema}.card_txn AS t
 WHERE t.txn_ts_local >= {from_date}::timestamp - interval '1 day'
   AND t.txn_ts_local <  {to_date}::timestamp + interval '1 day'
   AND (t.txn_ts_local AT TIME ZONE t.txn_tz) >= ({from_date}::timestamp AT TIME ZONE 'UTC')
   AND (t.txn_ts_local AT TIME ZONE t.txn_tz) <  ({to_date}::timestamp AT TIME ZONE 'UTC')
 GROUP BY 1, 2, 3;
