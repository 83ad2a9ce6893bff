"""`chatforge chat`: a two-turn terminal conversation against a live server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

from chatforge.chat_client import HttpChat, run_chat


def test_two_turn_conversation_in_a_real_terminal_process(server):
    chatforge = Path(sys.executable).with_name("chatforge")
    turns = "What is the capital of France? Answer in one sentence.\nAnd what is the capital of Germany?\n\n"
    proc = subprocess.run(
        [str(chatforge), "chat", "--url", server.url, "--temperature", "0", "--max-tokens", "24"],
        input=turns, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    answers = [part.split("\n")[0] for part in proc.stdout.split("assistant> ")[1:]]
    assert len(answers) == 2 and all(a.strip() for a in answers)
    assert "Paris" in answers[0]


class RecordingChat(HttpChat):
    def __init__(self, *args):
        super().__init__(*args)
        self.sent: list[list[dict]] = []

    def stream(self, messages, max_tokens, temperature):
        self.sent.append([dict(m) for m in messages])
        return super().stream(messages, max_tokens, temperature)


async def test_the_second_turn_carries_the_first(server):
    backend = RecordingChat(server.url, None, None)
    out = io.StringIO()
    await run_chat(backend, system="Be brief.", max_tokens=12, temperature=0.0,
                   stdin=io.StringIO("Hello!\nWhat did I just say?\n"), stdout=out)
    first, second = backend.sent
    assert [m["role"] for m in first] == ["system", "user"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"] and second[2]["content"] in out.getvalue()


def test_answers_follow_a_json_schema(server, tmp_path):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
              "additionalProperties": False}
    (tmp_path / "city.json").write_text(json.dumps(schema))
    chatforge = Path(sys.executable).with_name("chatforge")
    proc = subprocess.run(
        [str(chatforge), "chat", "--url", server.url, "--temperature", "0", "--max-tokens", "24",
         "--json-schema", str(tmp_path / "city.json")],
        input="Name the capital of France.\n\n", capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    answer = proc.stdout.split("assistant> ")[1].split("\nyou> ")[0]  # JSON may hold line breaks
    assert set(json.loads(answer)) == {"city"}


def test_a_schema_the_server_cannot_enforce_is_one_line_of_error(server):
    chatforge = Path(sys.executable).with_name("chatforge")
    proc = subprocess.run(
        [str(chatforge), "chat", "--url", server.url, "--json-schema", '{"type": "array", "uniqueItems": true}'],
        input="Hi\n\n", capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1 and "uniqueItems" in proc.stderr and "Traceback" not in proc.stderr
