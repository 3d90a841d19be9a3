"""Switching a SQLite file to WAL mode when other processes open it at the same moment.

    mode = to_wal(conn, timeout_s=30)    # "wal", after waiting out another connection's lock

`PRAGMA journal_mode=WAL` needs the file to itself for an instant, and SQLite answers SQLITE_BUSY at once instead
of calling the busy handler when another connection (a second `leankd run` opening the same fresh --out) holds
it: so retry for up to `timeout_s`, as every other statement waits.
"""
from __future__ import annotations

import sqlite3
import time


def to_wal(conn: sqlite3.Connection, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        except sqlite3.OperationalError as err:
            if not str(getattr(err, "sqlite_errorname", "")).startswith("SQLITE_BUSY") or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
