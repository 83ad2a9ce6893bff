"""Engines reached over HTTP: what a gateway (`chatforge serve --gateway`) runs its models on.

A model served by upstreams gets a `RemoteEngine` (remote_engine.py) in place of the in-process
`AsyncEngine`, with the same surface (`generate`, `finish`, `stats`, `is_running`), so the
service above it is unchanged: templates, tokenization, stop strings, detokenization, dialects,
keys, limits and usage all stay at the gateway. Below it:

- protocol.py: the chatforge node's token-level wire format (sampling in, outputs out);
- client.py: one client per upstream kind (chatforge nodes, OpenAI-compatible engines), and
  capabilities.py: which sampling fields each kind honours (the others are refused, never dropped);
- balancer.py: which node takes a request (prefix affinity by rendezvous hashing, load fallback);
- health.py: probes that never generate, cooldowns after server-side errors;
- loading.py: a model's tokenizer, template and context length, without its weights.
"""
