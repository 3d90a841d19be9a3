"""Results: the SQLite store of run rows (metrics, cost ledger, provenance)."""
