"""Accounts, API keys, products, deployments, rate limits and usage metering.

The API calls `gate.Platform` (authenticate, resolve a product or deployment, admit, settle,
record usage) and maps `errors.py` to its envelopes; `cli.register(app)` mounts the admin
commands. Storage is SQLAlchemy over SQLite or PostgreSQL, migrated by `migrations.upgrade`;
rate limits live in process or in Redis.
"""
