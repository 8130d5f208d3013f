"""Text-to-SQL pipeline: schema linking, SQL generation, execution on SQLite, bounded repair.

A declarative program: `link` picks the relevant tables, `generate` writes a query, `execute`
runs it against a real SQLite database (read-only connection, in the run's private workspace),
and a failed query routes back to `generate` with the error in its prompt, at most three times;
after that `fallback` runs a safe query derived from the linked schema, so the run always ends
with an answer.

With the built-in seeded model the SQL is noise, so the run takes the repair route and ends in the
fallback; with a real checkpoint the first or second query usually runs.

    legato run examples/text_to_sql.py
    legato run examples/text_to_sql.py --input question="Which city has the most customers?"
"""

import re
import sqlite3
from pathlib import Path
from typing import Any

import legato
from legato import END, START, Program, llm, ref, tool_node, when
from legato.tools import ToolContext, ToolRegistry

SCHEMA = (
    "SQLite database `shop`:\n"
    "  customers(id INTEGER PRIMARY KEY, name TEXT, city TEXT)\n"
    "  orders(id INTEGER PRIMARY KEY, customer_id INTEGER REFERENCES customers(id),\n"
    "         total REAL, placed TEXT)\n"
    "  products(id INTEGER PRIMARY KEY, title TEXT, price REAL)\n"
    "Answer with one SQLite SELECT statement ending in a semicolon.\n"
)
TABLES = ("customers", "orders", "products")
ROWS_LIMIT = 20

registry = ToolRegistry()


def _open_database(workdir: Path) -> sqlite3.Connection:
    """The run's database, created on first use in its workspace, then opened read-only."""
    path = workdir / "shop.db"
    if not path.exists():
        with sqlite3.connect(path) as db:
            db.executescript(
                "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, city TEXT);"
                "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer_id INTEGER, total REAL, placed TEXT);"
                "CREATE TABLE products(id INTEGER PRIMARY KEY, title TEXT, price REAL);"
                "INSERT INTO customers VALUES (1,'Ada','Paris'),(2,'Linus','Oslo'),(3,'Grace','Paris');"
                "INSERT INTO orders VALUES (1,1,30.5,'2026-01-02'),(2,1,12.0,'2026-02-11'),"
                "(3,3,99.9,'2026-03-05');"
                "INSERT INTO products VALUES (1,'keyboard',49.0),(2,'mouse',19.5);"
            )
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def _query(ctx: ToolContext, sql: str) -> dict[str, Any]:
    with _open_database(ctx.workdir) as db:
        try:
            rows = db.execute(sql).fetchmany(ROWS_LIMIT)
        except sqlite3.Error as exc:
            return {"ok": False, "sql": sql, "rows": [], "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "sql": sql, "rows": [list(r) for r in rows], "error": None}


@legato.tool(registry=registry, pure=True, timeout=10.0)
async def run_sql(ctx: ToolContext, text: str) -> dict[str, Any]:
    """Run the first SELECT statement found in the model's answer."""
    match = re.search(r"(SELECT\b[^;]*;)", text, re.IGNORECASE | re.DOTALL)
    if match is None:
        return {"ok": False, "sql": "", "rows": [], "error": "no SELECT statement found in the answer"}
    return _query(ctx, match.group(1))


@legato.tool(registry=registry, pure=True, timeout=10.0)
async def fallback_query(ctx: ToolContext, question: str, tables: str) -> dict[str, Any]:
    """A safe query from the linked schema: row count of the first table named anywhere."""
    named = [t for t in TABLES if t in f"{tables} {question}".lower()] or [TABLES[0]]
    return _query(ctx, f"SELECT COUNT(*) FROM {named[0]};")


sql = Program(
    {"question": "replace", "tables": "replace", "sql": "replace", "result": "replace"}, name="text-to-sql"
)
sql.prefix("sql_schema", SCHEMA)
sql.add_node(
    "link",
    llm(prefix=["sql_schema"], slots=["question"], suffix="Relevant tables:", output="tables", max_tokens=16),
)
sql.add_node(
    "generate",
    llm(
        prefix=["sql_schema"],
        slots=["question", "tables", "result"],
        suffix="SQL:",
        output="sql",
        max_tokens=32,
        max_visits=3,
        on_exhausted="fallback",
    ),
)
sql.add_node("execute", tool_node("run_sql", args={"text": ref("sql")}, output="result"))
sql.add_node(
    "fallback",
    tool_node("fallback_query", args={"question": ref("question"), "tables": ref("tables")}, output="result"),
)
sql.add_edge(START, "link")
sql.add_edge("link", "generate")
sql.add_edge("generate", "execute")
sql.add_conditional_edges(
    "execute", {"generate": when("result.ok", "falsy")}, destinations=["generate", END], default=END
)
sql.add_edge("fallback", END)
program = sql.compile(tools=registry)

inputs = {"question": "How many customers live in Paris?", "result": None}
