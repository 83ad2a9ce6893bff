"""The text layer: tokenizers (`tokenizer`), chat templates rendered in a sandbox
(`chat_template`), and streaming detokenization with stop strings (`detokenizer`). The engine
below it sees only token ids; the service above it sees only text."""
