"""Sample texts shared by the text tests."""

# Text the tokenizer tests run over: languages with accents, emoji (incl. ZWJ and flags), code,
# numbers, whitespace runs, and special-token strings inside ordinary text.
CORPUS = [
    "Hello world! How are you today?",
    "Grüße aus München: Größe ändern, Äpfel, Öl und Übermut — ß.",
    "Ça va ? L'été à Noël, où est la forêt ? Œuvre, naïve, façade.",
    "¿Dónde está el niño? ¡Señor, qué año tan pequeño!",
    "Emoji: 😀👍🏽🇨🇭 ❤️ 🧑‍💻 and 🎉🎉🎉",
    "中文测试，日本語のテキスト，한국어 텍스트.",
    "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)  # recursive\n",
    "for (int i = 0; i < 10; ++i) { printf(\"%d\\n\", i); }",
    "Pi is 3.14159265358979323846 and a big number is 123456789012345678901234567890.",
    "Phone: +41 (0)21 123 45 67, total 1,000,000.00 CHF in 2024.",
    "tabs\tand\t\ttabs, newlines\n\n\nand a CRLF\r\nline",
    "trailing spaces   ",
    "   leading spaces",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
    "inline <|im_end|> special and <|endoftext|> tokens, plus <filename>x.py",
    "",
]
# Whitespace runs right before a digit: llama.cpp's `smollm` split (each digit alone, then GPT-2's
# regex) and transformers' GGUF conversion (GPT-2's regex only) cut these differently.
WHITESPACE_BEFORE_DIGITS = ["a  5", "   7 days", "x\n\n2", "total:\t\t42", "count  =  100"]
