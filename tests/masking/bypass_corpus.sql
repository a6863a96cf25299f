-- Hostile queries for the SQL guard (tests/masking/test_guard.py).
-- Each case starts with a line "-- case: NAME"; "[allowed]" marks a harmless read
-- that the guard lets through (it must still return only allowed-table data).
-- {tmp} is replaced by a folder holding secret.csv / secret.parquet / secret.json.

-- case: read_csv file
SELECT * FROM read_csv('{tmp}/secret.csv')
-- case: read_csv_auto file
SELECT * FROM read_csv_auto('{tmp}/secret.csv')
-- case: read_parquet file
SELECT * FROM read_parquet('{tmp}/secret.parquet')
-- case: parquet_scan
SELECT * FROM parquet_scan('{tmp}/secret.parquet')
-- case: read_json
SELECT * FROM read_json('{tmp}/secret.json')
-- case: read_json_objects
SELECT * FROM read_json_objects('{tmp}/secret.json')
-- case: read_ndjson
SELECT * FROM read_ndjson_auto('{tmp}/secret.json')
-- case: read_text
SELECT content FROM read_text('{tmp}/secret.csv')
-- case: read_blob
SELECT content FROM read_blob('{tmp}/*')
-- case: glob listing
SELECT * FROM glob('{tmp}/*')
-- case: sniff_csv
SELECT * FROM sniff_csv('{tmp}/secret.csv')
-- case: parquet_metadata
SELECT * FROM parquet_metadata('{tmp}/secret.parquet')
-- case: string literal table csv
SELECT * FROM '{tmp}/secret.csv'
-- case: string literal table parquet
FROM '{tmp}/secret.parquet'
-- case: https url table
SELECT * FROM 'https://example.com/secret.csv'
-- case: read_csv url
SELECT * FROM read_csv('https://example.com/secret.csv')
-- case: s3 url
SELECT * FROM read_parquet('s3://bucket/secret.parquet')
-- case: lateral read_csv
SELECT * FROM customers, LATERAL read_csv('{tmp}/secret.csv')
-- case: join read_csv
SELECT c.id, s.* FROM customers c JOIN read_csv('{tmp}/secret.csv') s ON true
-- case: scalar subquery read_text
SELECT (SELECT content FROM read_text('{tmp}/secret.csv')) AS x FROM customers
-- case: attach file
ATTACH '{tmp}/other.duckdb' AS other
-- case: attach memory
ATTACH ':memory:' AS scratch
-- case: attach memory lowercase with comment
/* harmless */ attach ':memory:' as m2 -- done
-- case: detach
DETACH scratch
-- case: copy to file
COPY customers TO '{tmp}/out.csv'
-- case: copy query to file
COPY (SELECT * FROM customers) TO '{tmp}/out.parquet' (FORMAT parquet)
-- case: export database
EXPORT DATABASE '{tmp}/export'
-- case: import database
IMPORT DATABASE '{tmp}/export'
-- case: pragma version
PRAGMA version
-- case: pragma database_list
PRAGMA database_list
-- case: pragma show_tables
PRAGMA show_tables
-- case: set threads
SET threads = 1
-- case: set search_path
SET search_path = 'main,temp'
-- case: set external access
SET enable_external_access = true
-- case: reset
RESET threads
-- case: set variable
SET VARIABLE leak = (SELECT 1)
-- case: getvariable
SELECT getvariable('secret_var')
-- case: install extension
INSTALL httpfs
-- case: load extension
LOAD json
-- case: force install
FORCE INSTALL parquet
-- case: call duckdb_settings
CALL duckdb_settings()
-- case: call pragma
CALL pragma_version()
-- case: create table
CREATE TABLE stash AS SELECT * FROM customers
-- case: create temp view
CREATE TEMP VIEW v AS SELECT * FROM vault
-- case: create macro
CREATE MACRO leak() AS TABLE SELECT * FROM vault
-- case: insert
INSERT INTO customers VALUES (99, 'x', 'y')
-- case: update
UPDATE customers SET name = 'x'
-- case: delete
DELETE FROM customers
-- case: drop
DROP TABLE vault
-- case: alter
ALTER TABLE vault RENAME TO customers2
-- case: merge
MERGE INTO customers USING vault ON customers.id = vault.id WHEN MATCHED THEN DELETE
-- case: truncate
TRUNCATE vault
-- case: multi statement
SELECT 1; SELECT * FROM vault
-- case: multi statement comment hidden
SELECT 1 /* ; */; SELECT * FROM vault
-- case: multi statement after line comment
SELECT 1 -- comment
; ATTACH ':memory:' AS z
-- case: select into
SELECT * INTO stash FROM customers
-- case: prepare
PREPARE p AS SELECT * FROM vault
-- case: execute
EXECUTE p
-- case: describe
DESCRIBE vault
-- case: show tables
SHOW TABLES
-- case: show all tables
SHOW ALL TABLES
-- case: summarize
SUMMARIZE vault
-- case: summarize subquery
SELECT * FROM (SUMMARIZE vault)
-- case: describe subquery
SELECT * FROM (DESCRIBE customers)
-- case: begin transaction
BEGIN TRANSACTION
-- case: checkpoint
CHECKPOINT
-- case: vacuum
VACUUM
-- case: use
USE memory
-- case: explain
EXPLAIN SELECT * FROM vault
-- case: explain analyze
EXPLAIN ANALYZE SELECT * FROM customers
-- case: other cursor table
SELECT * FROM vault
-- case: other cursor table qualified
SELECT * FROM memory.main.vault
-- case: other cursor table main qualified
SELECT * FROM main.vault
-- case: other cursor temp view
SELECT * FROM raw_customers
-- case: python replacement scan
SELECT * FROM raw_secret
-- case: union with other table
SELECT name, ssn FROM customers UNION ALL SELECT name, ssn FROM vault
-- case: duckdb_settings function
SELECT * FROM duckdb_settings()
-- case: duckdb_settings quoted
SELECT * FROM "main"."duckdb_settings"()
-- case: duckdb_settings upper quoted scalar
SELECT "DUCKDB_SETTINGS"()
-- case: duckdb_tables view
SELECT * FROM duckdb_tables
-- case: duckdb_tables function
SELECT sql FROM duckdb_tables()
-- case: duckdb_views
SELECT sql FROM duckdb_views()
-- case: duckdb_columns
SELECT * FROM duckdb_columns()
-- case: duckdb_databases
SELECT * FROM duckdb_databases()
-- case: duckdb_variables
SELECT * FROM duckdb_variables()
-- case: duckdb_secrets
SELECT * FROM duckdb_secrets()
-- case: duckdb_extensions
SELECT * FROM duckdb_extensions()
-- case: duckdb_functions
SELECT * FROM duckdb_functions()
-- case: information_schema tables
SELECT * FROM information_schema.tables
-- case: information_schema columns
SELECT table_name, column_name FROM information_schema.columns
-- case: pg_catalog class
SELECT * FROM pg_catalog.pg_class
-- case: pg_tables unqualified
SELECT * FROM pg_tables
-- case: sqlite_master
SELECT sql FROM sqlite_master
-- case: sqlite_master quoted case
SELECT "sql" FROM "SQLITE_MASTER"
-- case: system catalog qualified
SELECT * FROM system.main.duckdb_settings()
-- case: temp catalog
SELECT * FROM temp.main.raw_customers
-- case: union with catalog
SELECT name FROM customers UNION SELECT table_name FROM information_schema.tables
-- case: cte named like system table
WITH duckdb_settings AS (SELECT * FROM duckdb_settings()) SELECT * FROM duckdb_settings
-- case: cte shadowing then catalog
WITH customers AS (SELECT * FROM vault) SELECT * FROM customers
-- case: cte forward reference
WITH a AS (SELECT * FROM vault), vault AS (SELECT 1 AS x) SELECT * FROM a
-- case: cte out of scope
SELECT * FROM (WITH vault AS (SELECT 1 AS x) SELECT * FROM vault) t, vault
-- case: subquery reads settings
SELECT * FROM customers WHERE id IN (SELECT 1 FROM duckdb_settings())
-- case: exists subquery catalog
SELECT * FROM customers WHERE EXISTS (SELECT 1 FROM sqlite_master)
-- case: current_setting
SELECT current_setting('threads')
-- case: current_setting in where
SELECT * FROM customers WHERE current_setting('memory_limit') IS NOT NULL
-- case: getenv
SELECT getenv('HOME')
-- case: version
SELECT version()
-- case: current_schema
SELECT current_schema()
-- case: current_database
SELECT current_database()
-- case: current_query
SELECT current_query()
-- case: current_user
SELECT current_user
-- case: qualified system function
SELECT system.main.current_setting('threads')
-- case: method call on settings
SELECT 'threads'.current_setting()
-- case: query table function
SELECT * FROM query('SELECT * FROM vault')
-- case: query_table
SELECT * FROM query_table('vault')
-- case: query_table list
SELECT * FROM query_table(['vault', 'customers'])
-- case: json_execute_serialized_sql
SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT * FROM vault'))
-- case: json_serialize_sql scalar
SELECT json_serialize_sql('SELECT 1')
-- case: json_serialize_plan
SELECT json_serialize_plan('SELECT * FROM vault')
-- case: sql_auto_complete
SELECT * FROM sql_auto_complete('SELECT * FROM va')
-- case: which_secret
SELECT * FROM which_secret('s3://x', 's3')
-- case: pg_get_viewdef
SELECT pg_get_viewdef(1)
-- case: format_type catalog macro
SELECT format_type(1, 1)
-- case: checkpoint function
SELECT * FROM checkpoint()
-- case: enable_logging
SELECT * FROM enable_logging()
-- case: duckdb_logs
SELECT * FROM duckdb_logs
-- case: sleep
SELECT sleep_ms(100000)
-- case: pg_sleep
SELECT pg_sleep(100)
-- case: nextval
SELECT nextval('seq')
-- case: setseed
SELECT setseed(0.5)
-- case: list_aggregate by name
SELECT list_aggregate([1, 2], 'sum')
-- case: table macro histogram
SELECT * FROM histogram(vault, ssn)
-- case: test_all_types
SELECT * FROM test_all_types()
-- case: summary table function
SELECT * FROM summary((SELECT * FROM customers))
-- case: repeat_row
SELECT * FROM repeat_row(1, num_rows := 1000000000)
-- case: positional parameter
SELECT * FROM customers WHERE id = $1
-- case: question parameter
SELECT * FROM customers WHERE id = ?
-- case: named parameter
SELECT * FROM customers WHERE id = $id
-- case: dollar quoted table name
SELECT * FROM $$vault$$
-- case: unicode escape identifier
SELECT * FROM U&"\0076ault"
-- case: quoted identifier with space
SELECT * FROM "vault "
-- case: comment inside keyword position
SELECT/**/*/**/FROM/**/vault
-- case: mixed case and whitespace
sElEcT	*
FROM
	VaUlT
-- case: escape string literal table
SELECT * FROM E'{tmp}/secret.csv'
-- case: recursive cte bomb
WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r
-- case: recursive cte string doubling
WITH RECURSIVE r(s) AS (SELECT 'x' UNION ALL SELECT s || s FROM r) SELECT max(length(s)) FROM r
-- case: recursive lowercase
with recursive t as (select 1 as n union all select n from t) select * from t
-- case: huge range
SELECT * FROM range(10000000000)
-- case: range with expression bound
SELECT * FROM range((SELECT count(*) FROM vault))
-- case: range with column bound
SELECT * FROM customers, range(customers.id * 1000000000)
-- case: pivot statement on vault
PIVOT vault ON ssn USING count(*)
-- case: unpivot statement
UNPIVOT customers ON name INTO NAME k VALUE v
-- case: values statement
VALUES (1)
-- case: from first other table
FROM vault SELECT ssn
-- case: at clause time travel
SELECT * FROM vault AT (VERSION => 1)
-- case: insert returning
INSERT INTO customers SELECT * FROM customers RETURNING *
-- case: detach memory
DETACH DATABASE IF EXISTS memory
-- case: cross join range bomb [allowed]
SELECT count(*) FROM range(1000) a, range(1000) b, range(1000) c, range(1000) d
-- case: harmless read of allowed table [allowed]
SELECT name, ssn FROM customers ORDER BY id
-- case: harmless cte [allowed]
WITH duckdb_settings AS (SELECT id FROM customers) SELECT * FROM duckdb_settings
-- case: harmless comment trick [allowed]
SELECT /* FROM vault */ id FROM customers -- ; SELECT * FROM vault
-- case: harmless string mentioning catalog [allowed]
SELECT 'SELECT * FROM duckdb_settings()' AS s FROM customers
-- case: harmless quoted case table [allowed]
SELECT * FROM "CUSTOMERS"
-- case: harmless main qualified [allowed]
SELECT * FROM main.customers
-- case: harmless unnest [allowed]
SELECT * FROM unnest(['a', 'b']) AS t(x)
-- case: harmless trailing semicolon [allowed]
SELECT id FROM customers;
-- case: harmless sample clause [allowed]
SELECT * FROM transactions USING SAMPLE 50%
-- case: qualified cast type
SELECT 'x'::memory.main.secret_enum
-- case: catalog subquery in unnest
SELECT * FROM customers, unnest((SELECT list(value) FROM duckdb_settings()))
-- case: catalog inside lambda
SELECT list_reduce([1, 2], lambda x, y: current_setting('threads'))
-- case: union with describe
SELECT 1 UNION (DESCRIBE vault)
