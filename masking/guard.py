"""SQL guard: only read-only SELECTs over the micro-database's own tables reach DuckDB.

The guard is the second wall (masking happens before data reaches DuckDB) and fails
closed. A query passes two independent checks:

1. sqlglot (dialect ``duckdb``) parses it and an ordered tuple of pure rules walks the
   tree: one statement, a SELECT or set operation at the root, no statement nodes
   anywhere, table references only to allowed tables or CTEs in scope, no table
   functions except bounded ``range``/``generate_series`` and ``unnest``, no functions
   that read settings, variables, files or system state, no recursive CTEs.
2. The SQL regenerated from that tree is parsed again by DuckDB's own parser
   (``json_serialize_sql``, parse only, nothing runs) on a private locked in-memory
   connection, and every function name and table reference DuckDB will bind is checked
   against the same allow-lists. This catches any place where sqlglot and DuckDB read
   the same text differently, which is the usual way around a parser-based guard.

Function policy is an allow-list: ``SAFE_FUNCTIONS`` is a curated list of DuckDB 2.0
scalar, aggregate, window and macro functions (built from ``duckdb_functions()`` once,
reviewed, and frozen here) minus everything that reads settings, variables, the
catalog, sessions or logs, sleeps, touches sequences, or runs SQL from a string. A
frozen list rather than one read from DuckDB at run time means a function added by a
future DuckDB release is refused until someone reviews it. The deny patterns are kept
as well, for clear messages and so ``allowed_functions_extra`` cannot re-enable them.

``WITH RECURSIVE`` is refused outright: a micro-database is small, and a recursive CTE
is the easiest unbounded loop to write. Other long-running queries (cross joins) are
stopped by the timeout in :func:`run_guarded`, and the result is capped at
``max_rows`` (the query is wrapped to produce at most ``max_rows + 1`` rows, and more
than ``max_rows`` is an error, never a silent truncation).
"""

from __future__ import annotations

import hashlib
import json
import heapq
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError, TokenError

from microdb.errors import ConfigError, QueryError, QueryRefused

__all__ = ["GuardedQuery", "SqlGuard", "CacheInfo", "SAFE_FUNCTIONS", "run_guarded"]

_DIALECT = sqlglot.Dialect.get_or_raise("duckdb")
_LOCKED_CONFIG = {"enable_external_access": False, "lock_configuration": True}

SAFE_FUNCTIONS: frozenset[str] = frozenset(
    """
    abs acos acosh add age ago alias any_value apply approx_count_distinct approx_quantile
    approx_top_k arbitrary arg_max arg_max_null arg_max_nulls_last arg_min arg_min_null
    arg_min_nulls_last argmax argmin array_agg array_append array_apply array_cat
    array_concat array_contains array_cosine_distance array_cosine_similarity
    array_cross_product array_distance array_distinct array_dot_product array_extract
    array_filter array_grade_up array_has array_has_all array_has_any array_indexof
    array_inner_product array_intersect array_length array_negative_dot_product
    array_negative_inner_product array_pop_back array_pop_front array_position array_prepend
    array_push_back array_push_front array_reduce array_resize array_reverse
    array_reverse_sort array_select array_slice array_sort array_to_json array_to_string
    array_to_string_comma_default array_transform array_unique array_value array_where
    array_zip ascii asin asinh assert_true atan atan2 atanh avg bar base64 bin binom bit_and
    bit_count bit_length bit_or bit_position bit_xor bitstring bitstring_agg
    bitstring_byte_comparable bool_and bool_or can_cast_implicitly cardinality cast_to_type
    cbrt ceil ceiling century char_length character_length chr coalesce concat concat_ws
    constant_or_null contains corr cos cosh cot count count_if count_star countif covar_pop
    covar_samp create_sort_key cume_dist current_date current_localtime
    current_localtimestamp damerau_levenshtein date_add date_diff date_part date_sub
    date_trunc datediff datepart datesub datetrunc day dayname dayofmonth dayofweek
    dayofyear days_in_month decade decimal_average decimal_division decode degrees
    dense_rank divide editdist3 element_at encode ends_with entropy enum_code enum_first
    enum_last enum_range enum_range_boundary epoch epoch_ms epoch_ns epoch_us
    equi_width_bins era even exp factorial favg fdiv fill filter first first_value flatten
    floor fmod format format_bytes format_pg_type formatreadabledecimalsize
    formatreadablesize from_base64 from_binary from_hex from_json from_json_strict fsum
    gamma gcd gen_random_uuid generate_series generate_subscripts geomean geometric_mean
    get_bit get_current_time get_current_timestamp get_type grade_up greatest
    greatest_common_divisor group_concat grouping grouping_id hamming hash hex histogram
    histogram_exact hour icu_sort_key if ilike_escape index_key instr invoke
    is_histogram_other_bin isfinite isinf isnan isodow isoyear jaccard jaro_similarity
    jaro_winkler_similarity json json_array json_array_length json_contains json_deep_merge
    json_exists json_extract json_extract_path json_extract_path_text json_extract_string
    json_group_array json_group_object json_group_structure json_insert json_keys
    json_merge_patch json_merge_patch_diff json_normalize json_object json_pretty json_quote
    json_remove json_replace json_set json_strip_nulls json_structure json_transform
    json_transform_strict json_type json_valid json_value julian kahan_sum kurtosis
    kurtosis_pop lag last last_day last_value lcase lcm lead least least_common_multiple
    left left_grapheme len length length_grapheme levenshtein lgamma like_escape list
    list_any_value list_append list_apply list_approx_count_distinct list_avg list_bit_and
    list_bit_or list_bit_xor list_bool_and list_bool_or list_cat list_concat list_contains
    list_cosine_distance list_cosine_similarity list_count list_distance list_distinct
    list_dot_product list_element list_entropy list_extract list_filter list_first
    list_grade_up list_has list_has_all list_has_any list_histogram list_indexof
    list_inner_product list_intersect list_kurtosis list_kurtosis_pop list_last list_mad
    list_max list_median list_min list_mode list_negative_dot_product
    list_negative_inner_product list_pack list_position list_prepend list_product
    list_reduce list_resize list_reverse list_reverse_sort list_select list_sem
    list_skewness list_slice list_sort list_stddev_pop list_stddev_samp list_string_agg
    list_sum list_transform list_unique list_value list_var_pop list_var_samp list_where
    list_zip listagg ln log log10 log2 lower lpad ltrim lttb mad make_date make_time
    make_timestamp make_timestamp_ms make_timestamp_ns make_timestamptz make_type map
    map_concat map_contains map_contains_entry map_contains_value map_entries map_extract
    map_extract_value map_from_entries map_keys map_to_pg_oid map_values max max_by md5
    md5_number md5_number_lower md5_number_upper mean median microsecond millennium
    millisecond min min_by minute mismatches mod mode month monthname multiply nanosecond
    nextafter nfc_normalize normalized_interval not_ilike_escape not_like_escape now
    nth_value ntile nullif octet_length ord overlay parse_formatted_bytes percent_rank pi
    position pow power prefix printf product quantile quantile_cont quantile_disc quarter
    radians random range rank rank_dense reduce regexp_escape regexp_extract
    regexp_extract_all regexp_full_match regexp_matches regexp_replace regexp_split_to_array
    regexp_split_to_table regr_avgx regr_avgy regr_count regr_intercept regr_r2 regr_slope
    regr_sxx regr_sxy regr_syy remap_struct repeat replace replace_type reservoir_quantile
    reverse right right_grapheme round round_even roundbankers row row_number row_to_json
    rpad rtrim second sem set_bit sha1 sha256 sign signbit sin sinh skewness split
    split_part sqrt st_asbinary st_asgeojson st_astext st_aswkb st_aswkt st_crs
    st_geomfromgeojson st_geomfromwkb st_intersects_extent st_setcrs starts_with stddev
    stddev_pop stddev_samp str_split str_split_regex strftime string_agg string_split
    string_split_regex string_to_array strip_accents strlen strpos strptime struct_concat
    struct_contains struct_extract struct_extract_at struct_has struct_indexof struct_insert
    struct_keys struct_pack struct_position struct_update struct_values substr substring
    substring_grapheme subtract suffix sum sum_no_overflow sumkahan switch tan tanh
    time_bucket timetz_byte_comparable timezone timezone_hour timezone_minute to_base
    to_base64 to_binary to_centuries to_days to_decades to_hex to_hours to_json
    to_microseconds to_millennia to_milliseconds to_minutes to_months to_quarters to_seconds
    to_timestamp to_weeks to_years today transaction_timestamp translate trim trunc try
    try_strptime typeof ucase unbin unhex unicode union_extract union_tag union_value unnest
    unpivot_list upper url_decode url_encode uuid uuid_extract_timestamp
    uuid_extract_version uuidv4 uuidv7 var_pop var_samp variance variant_array_length
    variant_bytes_to_variant variant_comparator variant_contains variant_exists
    variant_extract variant_extract_string variant_group_array variant_group_object
    variant_keys variant_normalize variant_to_parquet_variant variant_type variant_typeof
    vertex_extract wavg week weekday weekofyear weighted_avg xor year yearweek
""".split()
)
"""Scalar, aggregate, window and macro functions a query may call (lower case)."""

# Operators and parser-level names DuckDB's parser emits as function calls.
_OPERATOR_FUNCTIONS = frozenset(
    "!= !__postfix !~~ !~~* % & && * ** + - ->> / // < <-> << <= <=> <@ = > >= >> @ @> ^ ^@"
    " | || ~ ~~ ~~* ~~~".split()
) | {"is distinct from", "is not distinct from"}

TABLE_FUNCTIONS: frozenset[str] = frozenset({"range", "generate_series", "unnest"})
"""Table functions allowed in FROM; ``range``/``generate_series`` need literal bounds."""

_DENY_PATTERN = re.compile(
    r"^(read_.*|.*_scan|glob|sniff_csv|query|query_table|sql_auto_complete|duckdb_.*"
    r"|pragma_.*|which_secret|current_.*|getenv|getvariable|setvariable|version"
    r"|checkpoint|force_checkpoint|json_execute_serialized_sql|json_serialize_.*"
    r"|json_deserialize_sql|enable_.*|disable_.*|export_.*|import_.*|parquet_.*"
    r"|parse_path|parse_dirname|parse_dirpath|parse_filename|path_join|session_user|user"
    r"|pg_.*|has_.*_privilege|inet_.*|sleep_ms|nextval|currval|setval|setseed"
    r"|write_log|stats|error|in_search_path|txid_current|get_block_size|format_type"
    r"|test_all_types|test_vector_types|summary|repeat_row|icu_calendar_names"
    r"|.*_external_resource.*|truncate_duckdb_logs|__.*)$"
)
_DENY_EXCEPTIONS = frozenset(
    {"current_date", "current_time", "current_timestamp", "current_localtime",
     "current_localtimestamp"}
)

_SYSTEM_NAME = re.compile(r"^(duckdb_|pg_|sqlite_|pragma_|information_schema)")

_STATEMENT_NODES: tuple[type[exp.Expression], ...] = tuple(
    cls
    for cls in (
        getattr(exp, name, None)
        for name in (
            "Command", "Insert", "Update", "Delete", "Merge", "Create", "Drop", "Alter",
            "Attach", "Detach", "Copy", "Export", "Pragma", "Set", "SetItem", "Use",
            "Describe", "Show", "Summarize", "Transaction", "Commit", "Rollback",
            "Install", "Load", "Into", "Kill", "Grant", "Revoke", "Analyze", "Refresh",
            "Cache", "Uncache", "LoadData", "TruncateTable", "Lock", "Declare", "Execute",
            "Placeholder", "Parameter", "SessionParameter", "Property", "Properties",
        )
    )
    if isinstance(cls, type)
)

_REFUSED_DUCKDB_TYPES = frozenset(
    {"RECURSIVE_CTE_NODE", "SHOW_REF", "COLUMN_DATA", "DELIM_GET", "VALUE_PARAMETER"}
)


def _refuse(what: str, why: str) -> QueryRefused:
    return QueryRefused(f"refused: {what[:80]} — {why}")


def _is_denied(name: str) -> bool:
    return name not in _DENY_EXCEPTIONS and _DENY_PATTERN.match(name) is not None


@dataclass(frozen=True)
class GuardedQuery:
    """A query the guard accepted, ready to run with :func:`run_guarded`."""

    sql: str
    tables: frozenset[str]
    fingerprint: str
    max_rows: int = 100_000


@dataclass(frozen=True)
class CacheInfo:
    """Counters of a guard's result cache; ``parses`` counts sqlglot parses."""

    hits: int
    misses: int
    parses: int
    size: int
    maxsize: int


@dataclass(frozen=True)
class _Context:
    """What the rules need to know; immutable so rules stay pure."""

    allowed: dict[str, str]
    functions: frozenset[str]
    max_rows: int
    max_depth: int


# --- rules over the sqlglot tree (each reads the tree, raises, returns nothing) ---


def _rule_statement(tree: exp.Expression, ctx: _Context) -> None:
    """Root is a SELECT or set operation; no statement-like node anywhere."""
    if not isinstance(tree, (exp.Select, exp.SetOperation)):
        raise _refuse(f"{type(tree).__name__.upper()} statement", "only SELECT queries are allowed")
    for node in tree.walk():
        if isinstance(node, _STATEMENT_NODES):
            raise _refuse(type(node).__name__.upper(), "only read-only SELECT queries are allowed")
        if isinstance(node, exp.With) and node.args.get("recursive"):
            raise _refuse("WITH RECURSIVE", "recursive CTEs are not allowed")


def _rule_depth(tree: exp.Expression, ctx: _Context) -> None:
    """The expression tree is no deeper than 4 × max_depth (long AND chains are fine)."""
    limit = 4 * ctx.max_depth
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            raise _refuse("query", f"nested deeper than {limit} expression levels")
        stack.extend((child, depth + 1) for child in node.iter_expressions())


def _visible_ctes(table: exp.Table) -> set[str]:
    """CTE names in scope at ``table``: earlier siblings (and itself if recursive)."""
    names: set[str] = set()
    inside: exp.CTE | None = None
    node: exp.Expression | None = table
    while node is not None:
        if isinstance(node, exp.CTE):
            inside = node
        with_ = node.args.get("with_") or node.args.get("with")
        if isinstance(with_, exp.With):
            ctes = list(with_.expressions)
            position = next((i for i, cte in enumerate(ctes) if cte is inside), None)
            if position is not None:
                ctes = ctes[:position]
            names.update(cte.alias_or_name.lower() for cte in ctes)
        node = node.parent
    return names


def _table_function(node: exp.Expression, ctx: _Context) -> None:
    """Check a function used as a table: only bounded series and unnest."""
    if isinstance(node, exp.Unnest):
        return
    if isinstance(node, exp.GenerateSeries):
        bounds = [node.args.get(key) for key in ("start", "end", "step")]
        values = [_int_literal(b) for b in bounds if b is not None]
        if any(v is None for v in values) or len(values) < 2:
            raise _refuse("table function range/generate_series", "bounds must be integer literals")
        start, end = values[0], values[1]
        step = values[2] if len(values) > 2 else 1
        if step == 0:
            raise _refuse("table function range/generate_series", "step must not be zero")
        if node.args.get("is_end_exclusive"):
            count = max(0, -((start - end) // step))
        else:
            count = max(0, (end - start) // step + 1)
        if count > ctx.max_rows:
            raise _refuse("table function range/generate_series", f"produces more than {ctx.max_rows} rows")
        return
    name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
    raise _refuse(f"table function {name.lower()}", "table functions read files or system state; only range, generate_series and unnest are allowed")


def _int_literal(node: exp.Expression) -> int | None:
    negative = False
    while isinstance(node, (exp.Neg, exp.Paren)):
        negative ^= isinstance(node, exp.Neg)
        node = node.this
    if isinstance(node, exp.Literal) and not node.is_string and re.fullmatch(r"\d{1,18}", node.name):
        return -int(node.name) if negative else int(node.name)
    return None


def _rule_tables(tree: exp.Expression, ctx: _Context) -> None:
    """Tables are allowed tables (unqualified or ``main.``) or CTEs in scope."""
    for node in tree.find_all(exp.Table, exp.Lateral):
        inner = node.this
        if isinstance(node, exp.Lateral):
            if isinstance(inner, exp.Func):
                _table_function(inner, ctx)
            continue
        if isinstance(inner, exp.Func):
            _table_function(inner, ctx)
            continue
        if not isinstance(inner, exp.Identifier):
            raise _refuse(f"table reference {inner.sql(dialect=_DIALECT)}", "not a plain table name")
        name = inner.this.lower()
        catalog, db = node.args.get("catalog"), node.args.get("db")
        if catalog is not None or (db is not None and db.name.lower() != "main"):
            raise _refuse(f"table {node.sql(dialect=_DIALECT)}", "only the micro-database's own tables can be read")
        if db is None and name in _visible_ctes(node):
            continue
        if name not in ctx.allowed:
            raise _refuse(f"table {inner.this}", "not a table of this micro-database")


def _rule_functions(tree: exp.Expression, ctx: _Context) -> None:
    """No function that reads settings, files or system state; unknown names refused."""
    for node in tree.find_all(exp.Func):
        if isinstance(node, exp.Anonymous):
            name = node.name.lower()
            if isinstance(node.parent, (exp.Table, exp.Lateral)):
                continue  # checked as a table function by _rule_tables
            if _is_denied(name) or name not in ctx.functions:
                raise _refuse(f"function {name}", "not an allowed function")
        else:
            name = node.sql_name().lower()
            if _is_denied(name) or isinstance(node, (exp.ReadCSV, exp.CurrentSchema, exp.CurrentDatabase, exp.CurrentUser, exp.CurrentVersion)):
                raise _refuse(f"function {name}", "reads settings, files or system state")


RULES: tuple[Callable[[exp.Expression, _Context], None], ...] = (
    _rule_statement,
    _rule_depth,
    _rule_tables,
    _rule_functions,
)
"""Ordered pure rules over the parsed tree; each raises QueryRefused or returns."""


# --- second check: DuckDB's own parse of the SQL we will run ---


def _duckdb_nodes(tree: object) -> Iterator[tuple[dict, frozenset[str], bool]]:
    """Yield (node, CTE names in scope, is-table-function-call) for every JSON object."""
    stack: list[tuple[object, frozenset[str], bool]] = [(tree, frozenset(), False)]
    while stack:
        node, ctes, as_table = stack.pop()
        if isinstance(node, list):
            stack.extend((item, ctes, False) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        cte_map = node.get("cte_map")
        entries = cte_map.get("map", []) if isinstance(cte_map, dict) else []
        keys = [str(entry.get("key", "")).lower() for entry in entries]
        for i, entry in enumerate(entries):  # a CTE sees only the CTEs defined before it
            stack.append((entry.get("value"), ctes | frozenset(keys[:i]), False))
        ctes = ctes | frozenset(keys)
        yield node, ctes, as_table
        for key, value in node.items():
            if key != "cte_map":
                is_fn = node.get("type") == "TABLE_FUNCTION" and key == "function"
                stack.append((value, ctes, is_fn))


def _check_duckdb_tree(tree: dict, ctx: _Context) -> None:
    """Check the tree DuckDB's parser produced for the SQL that will run."""
    if tree.get("error"):
        raise QueryError(f"SQL syntax error: {str(tree.get('error_message', '')).splitlines()[0][:200]}")
    statements = tree.get("statements", [])
    if len(statements) != 1:
        raise _refuse("query", "exactly one statement is allowed")
    for node, ctes, as_table in _duckdb_nodes(statements[0]):
        kind, cls = node.get("type"), node.get("class")
        if not isinstance(kind, str) or not isinstance(cls, (str, type(None))):
            continue  # a value whose key happens to be "type" (sample sizes, literals)
        if kind in _REFUSED_DUCKDB_TYPES or cls == "PARAMETER":
            raise _refuse(str(kind).lower().replace("_", " "), "not allowed in a guarded query")
        if cls in ("FUNCTION", "WINDOW") and "function_name" in node:
            name = str(node["function_name"]).lower()
            if node.get("schema") or node.get("catalog"):
                raise _refuse(f"function {node.get('schema')}.{name}", "qualified function and method-call syntax are not allowed")
            allowed = TABLE_FUNCTIONS if as_table else ctx.functions | _OPERATOR_FUNCTIONS
            if name not in allowed or (_is_denied(name) and name not in _OPERATOR_FUNCTIONS):
                raise _refuse(f"{'table ' if as_table else ''}function {name}", "not an allowed function")
        if cls == "TYPE" and (node.get("schema") or node.get("catalog")):
            raise _refuse(f"type {node.get('schema')}.{node.get('type_name')}", "qualified type names are not allowed")
        if kind == "BASE_TABLE":
            name = str(node.get("table_name", "")).lower()
            schema = str(node.get("schema_name", "")).lower()
            if node.get("catalog_name") or schema not in ("", "main"):
                raise _refuse(f"table {schema}.{name}", "only the micro-database's own tables can be read")
            if name not in ctx.allowed and not (schema == "" and name in ctes):
                raise _refuse(f"table {name}", "not a table of this micro-database")


class _DuckDBParser:
    """A private locked in-memory DuckDB connection used only to parse SQL to JSON."""

    def __init__(self) -> None:
        self._con = duckdb.connect(":memory:", config=dict(_LOCKED_CONFIG))
        self._lock = threading.Lock()

    def parse(self, sql: str) -> dict:
        with self._lock:
            try:
                row = self._con.execute("SELECT json_serialize_sql(?)", [sql]).fetchone()
            except duckdb.Error as err:
                raise QueryError(f"SQL syntax error: {str(err).splitlines()[0][:200]}") from err
        if row is None:
            raise QueryError("SQL syntax error: DuckDB returned no parse tree")
        return json.loads(row[0])


# --- the guard ---


class SqlGuard:
    """Check SQL against the allowed tables and functions; cache results per SQL string."""

    def __init__(
        self,
        allowed_tables: Iterable[str],
        *,
        max_rows: int = 100_000,
        max_length: int = 100_000,
        max_depth: int = 64,
        allowed_functions_extra: Iterable[str] = (),
        cache_size: int = 1024,
    ) -> None:
        allowed: dict[str, str] = {}
        for table in allowed_tables:
            if not isinstance(table, str) or not table.strip():
                raise ConfigError(f"allowed table name {table!r} is empty or not a string")
            if _SYSTEM_NAME.match(table.lower()) or table.lower() in ("sqlite_master", "sqlite_schema", "sqlite_temp_master"):
                raise ConfigError(f"allowed table name {table!r} collides with a DuckDB system catalog name")
            allowed[table.lower()] = table
        extra = frozenset(name.lower() for name in allowed_functions_extra)
        denied = sorted(name for name in extra if _is_denied(name))
        if denied:
            raise ConfigError(f"allowed_functions_extra names denied functions: {', '.join(denied)}")
        if min(max_rows, max_length, max_depth, cache_size) < 1:
            raise ConfigError("max_rows, max_length, max_depth and cache_size must be at least 1")
        self._ctx = _Context(allowed, SAFE_FUNCTIONS | extra, max_rows, max_depth)
        self._max_length = max_length
        self._cache: OrderedDict[str, GuardedQuery | QueryRefused | QueryError] = OrderedDict()
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._hits = self._misses = self._parses = 0
        self._duckdb = _DuckDBParser()

    def check(self, sql: str) -> GuardedQuery:
        """Return the guarded form of ``sql`` or raise QueryRefused / QueryError."""
        with self._cache_lock:
            cached = self._cache.get(sql)
            if cached is not None:
                self._cache.move_to_end(sql)
                self._hits += 1
            else:
                self._misses += 1
        if cached is None:
            try:
                cached = self._check_uncached(sql)
            except (QueryRefused, QueryError) as err:
                cached = err
            with self._cache_lock:
                self._cache[sql] = cached
                self._cache.move_to_end(sql)
                while len(self._cache) > self._cache_size:
                    self._cache.popitem(last=False)
        if isinstance(cached, GuardedQuery):
            return cached
        raise type(cached)(cached.message)

    def cache_info(self) -> CacheInfo:
        """Hits, misses, sqlglot parses and size of the result cache."""
        with self._cache_lock:
            return CacheInfo(self._hits, self._misses, self._parses, len(self._cache), self._cache_size)

    def _check_uncached(self, sql: str) -> GuardedQuery:
        if not isinstance(sql, str):
            raise _refuse("query", "SQL must be a string")
        if len(sql) > self._max_length:
            raise _refuse("query", f"longer than {self._max_length} characters")
        if "\x00" in sql:
            raise _refuse("query", "contains a NUL character")
        tree = self._parse(sql)
        for rule in RULES:
            rule(tree, self._ctx)
        try:
            inner = tree.sql(dialect=_DIALECT, comments=False, unsupported_level=ErrorLevel.RAISE)
        except RecursionError as err:
            raise _refuse("query", "too deeply nested") from err
        except SqlglotError as err:
            raise _refuse("query", f"cannot be normalized for DuckDB: {str(err).splitlines()[0][:200]}") from err
        wrapped = f"SELECT * FROM ({inner}) AS _q LIMIT {self._ctx.max_rows + 1}"
        _check_duckdb_tree(self._duckdb.parse(wrapped), self._ctx)
        tables = frozenset(
            self._ctx.allowed[t.name.lower()]
            for t in tree.find_all(exp.Table)
            if isinstance(t.this, exp.Identifier) and t.name.lower() in self._ctx.allowed
            and not (t.args.get("db") is None and t.name.lower() in _visible_ctes(t))
        )
        fingerprint = hashlib.sha256(inner.encode()).hexdigest()
        return GuardedQuery(wrapped, tables, fingerprint, self._ctx.max_rows)

    def _parse(self, sql: str) -> exp.Expression:
        """Tokenize, bound the parenthesis depth, parse; exactly one statement."""
        try:
            tokens = _DIALECT.tokenize(sql)
        except TokenError as err:
            raise QueryError(f"SQL syntax error: {str(err).splitlines()[0][:200]}") from err
        depth = deepest = 0
        for token in tokens:
            if token.token_type in (sqlglot.TokenType.L_PAREN, sqlglot.TokenType.L_BRACKET, sqlglot.TokenType.L_BRACE):
                depth += 1
                deepest = max(deepest, depth)
            elif token.token_type in (sqlglot.TokenType.R_PAREN, sqlglot.TokenType.R_BRACKET, sqlglot.TokenType.R_BRACE):
                depth -= 1
        if deepest > self._ctx.max_depth:
            raise _refuse("query", f"nested deeper than {self._ctx.max_depth} levels")
        with self._cache_lock:
            self._parses += 1
        try:
            statements = _DIALECT.parser(error_level=ErrorLevel.IMMEDIATE).parse(tokens, sql)
        except ParseError as err:
            first = err.errors[0] if err.errors else {}
            raise QueryError(
                f"SQL syntax error at line {first.get('line', '?')}, col {first.get('col', '?')}: "
                f"{first.get('description', str(err).splitlines()[0])[:200]}"
            ) from err
        except RecursionError as err:
            raise _refuse("query", "too deeply nested") from err
        except SqlglotError as err:
            raise QueryError(f"SQL syntax error: {str(err).splitlines()[0][:200]}") from err
        statements = [s for s in statements if s is not None]
        if len(statements) != 1:
            raise _refuse(f"{len(statements)} statements", "exactly one statement is allowed")
        return statements[0]


class _Watchdog:
    """One daemon thread that interrupts cursors whose deadline passed.

    Starting a thread per query (``threading.Timer``) costs about a millisecond, as much
    as a small query itself; a single watchdog keeps the timeout free on the hot path.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int]] = []
        self._live: dict[int, tuple[duckdb.DuckDBPyConnection, dict[str, bool]]] = {}
        self._seq = 0
        self._thread: threading.Thread | None = None

    def arm(self, cursor: duckdb.DuckDBPyConnection, timeout_s: float) -> tuple[int, dict[str, bool]]:
        state = {"fired": False}
        with self._cond:
            self._seq += 1
            token = self._seq
            self._live[token] = (cursor, state)
            heapq.heappush(self._heap, (time.monotonic() + timeout_s, token))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="microdb-query-watchdog", daemon=True)
                self._thread.start()
            self._cond.notify()
        return token, state

    def disarm(self, token: int) -> None:
        with self._cond:
            self._live.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token = self._heap[0]
                delay = deadline - time.monotonic()
                if delay > 0:
                    self._cond.wait(delay)
                    continue
                heapq.heappop(self._heap)
                cursor, state = self._live.pop(token)
                state["fired"] = True
                cursor.interrupt()


_WATCHDOG = _Watchdog()


def run_guarded(cursor: duckdb.DuckDBPyConnection, guarded: GuardedQuery, timeout_s: float) -> pa.Table:
    """Run a guarded query on ``cursor``; interrupt it after ``timeout_s`` seconds.

    Raises QueryError on timeout, on any DuckDB error (first line of its message) and
    when the result has more than ``guarded.max_rows`` rows (fail closed: no silent
    truncation).
    """
    if timeout_s <= 0:
        raise ConfigError(f"query timeout must be positive, got {timeout_s}")
    token, state = _WATCHDOG.arm(cursor, timeout_s)
    try:
        result = cursor.sql(guarded.sql).to_arrow_table()
    except duckdb.Error as err:
        _WATCHDOG.disarm(token)
        if state["fired"] or isinstance(err, duckdb.InterruptException):
            raise QueryError(f"query exceeded the timeout of {timeout_s:g} s") from err
        raise QueryError(str(err).splitlines()[0][:500]) from err
    finally:
        _WATCHDOG.disarm(token)
    if state["fired"]:
        raise QueryError(f"query exceeded the timeout of {timeout_s:g} s")
    if result.num_rows > guarded.max_rows:
        raise QueryError(f"result exceeds the row limit of {guarded.max_rows}")
    return result
