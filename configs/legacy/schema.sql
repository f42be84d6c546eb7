-- The legacy batch warehouse's card-transaction tables (PostgreSQL), as they exist in production.
-- NOT a copy of our Avro contract: local wall-clock time + IANA zone, major-unit amounts, one-letter
-- codes. configs/legacy/mapping.yaml maps a row of card_txn to the contract.
--
-- `{schema}` is replaced by the quoted schema name (settings.legacy.schema, a per-test schema in tests).
-- Idempotent: every statement is IF NOT EXISTS, so `nova legacy seed` can run it every time.

CREATE SCHEMA IF NOT EXISTS {schema};

CREATE TABLE IF NOT EXISTS {schema}.card_txn (
  txn_ref          varchar(36) PRIMARY KEY,        -- = our transaction_id (uuid text)
  txn_ts_local     timestamp without time zone NOT NULL,  -- wall-clock time at the merchant
  txn_tz           text NOT NULL,                  -- IANA zone of the merchant, e.g. Europe/Berlin
  card_token       text NOT NULL,
  acct_no          text NOT NULL,
  merchant_code    text NOT NULL,                  -- = merchant_id
  mcc              char(4) NOT NULL,
  amount           numeric(14,2) NOT NULL,         -- MAJOR units (JPY has no minor unit: amount is whole yen)
  ccy              char(3) NOT NULL,
  merchant_country char(2) NOT NULL,
  channel_cd       char(1) NOT NULL,               -- P=POS E=ECOM A=ATM M=MOTO C=CONTACTLESS
  status_cd        varchar(4) NOT NULL,            -- AUTH CAPT DECL RFND REVS
  device_ref       text NULL,
  client_ip        inet NULL,
  geo_lat          numeric(9,6) NULL,
  geo_lon          numeric(9,6) NULL,
  batch_id         integer NOT NULL,
  loaded_at        timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS card_txn_ts ON {schema}.card_txn (txn_ts_local);

CREATE TABLE IF NOT EXISTS {schema}.daily_merchant_summary (   -- the nightly ETL's output
  business_date date NOT NULL,                     -- UTC date of the event
  merchant_code text NOT NULL,
  ccy           char(3) NOT NULL,
  txn_count     integer NOT NULL,
  amount_total  numeric(18,2) NOT NULL,
  PRIMARY KEY (business_date, merchant_code, ccy)
);
