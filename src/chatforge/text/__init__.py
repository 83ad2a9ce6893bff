"""The text layer: tokenizers (`tokenizer`), chat templates rendered in a sandbox
(`chat_template`), streaming detokenization with stop strings (`detokenizer`), constrained
decoding (`structured`), and tool calls: their formats and grammars (`tool_format`), their place
in the prompt (`tool_prompt`) and their parsing out of the output (`tool_calls`). The engine
below it sees only token ids; the service above it sees only text."""
