"""Reads a tables root with pyarrow and DuckDB; prints what each sees, per table, as JSON.

Usage: read_tables.py ROOT. For each `<Table>/` under ROOT: the column names and types each
reader reports, the `day` partition values, and every row (timestamps as integers: nanoseconds
from pyarrow, microseconds or nanoseconds from DuckDB as its type says).
"""
import json
import os
import sys

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds


def pyarrow_side(path):
    dataset = ds.dataset(path, format="parquet", partitioning="hive")
    table = dataset.to_table()
    columns = [[f.name, str(f.type)] for f in table.schema]
    converted = []
    for f, col in zip(table.schema, table.columns):
        if pa.types.is_timestamp(f.type):
            col = col.cast(pa.int64())
        elif pa.types.is_dictionary(f.type) or pa.types.is_date(f.type):
            col = col.cast(pa.string())
        converted.append(col)
    rows = pa.Table.from_arrays(converted, names=table.column_names).to_pylist()
    return {"columns": columns, "rows": rows}


def duckdb_side(path):
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    source = f"read_parquet('{path}/*/*.parquet', hive_partitioning = true)"
    described = con.sql(f"DESCRIBE SELECT * FROM {source}").fetchall()
    columns = [[name, ty] for name, ty, *_ in described]
    select = []
    for name, ty in columns:
        quoted = '"' + name.replace('"', '""') + '"'
        if ty.startswith("TIMESTAMP"):
            if "NS" in ty:
                select.append(f"epoch_ns(CAST({quoted} AS TIMESTAMP_NS)) AS {quoted}")
            else:
                select.append(f"epoch_us({quoted}) AS {quoted}")
        elif ty == "DATE":
            select.append(f"strftime({quoted}, '%Y-%m-%d') AS {quoted}")
        else:
            select.append(quoted)
    cursor = con.execute(f"SELECT {', '.join(select)} FROM {source}")
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, r)) for r in cursor.fetchall()]
    return {"columns": columns, "rows": rows}


def main():
    root = sys.argv[1]
    out = {}
    for table in sorted(os.listdir(root)):
        path = os.path.join(root, table)
        if table.startswith("_") or not os.path.isdir(path):
            continue
        days = sorted(d[len("day="):] for d in os.listdir(path) if d.startswith("day="))
        out[table] = {"days": days, "pyarrow": pyarrow_side(path), "duckdb": duckdb_side(path)}
    print(json.dumps(out))


main()
