"""`chatforge bench`: an asyncio load generator for any OpenAI-compatible chat server.

workload.py builds the requests, client.py sends one and times it, runner.py drives
concurrency levels (and a second server alternately), report.py turns timings into figures.
"""
