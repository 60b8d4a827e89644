"""The usage ledger: one record per request (REST, gRPC, batch lines), kept in SQLite, summed for billing."""
