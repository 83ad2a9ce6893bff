"""LangChain's `ChatOpenAI` against a live server, unchanged: `bind_tools` with each tool_choice,
streaming tool calls, a tool-result round trip and `with_structured_output`."""

from __future__ import annotations

import pydantic
import pytest
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI


@tool
def get_weather(city: str) -> str:
    """The current weather in a city."""
    return f"It is sunny in {city}."


@tool
def search_web(query: str) -> str:
    """Search the web."""
    return "No results."


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=20)
    country: str = pydantic.Field(max_length=20)


QUESTION = "What is the weather in Bern?"


@pytest.fixture(scope="module")
def llm(server):
    return ChatOpenAI(base_url=server.url + "/v1", api_key="unused", model="smollm2", temperature=0, max_tokens=48,
                      max_retries=0)


@pytest.mark.parametrize("choice", ["required", "get_weather", "search_web"])  # LangChain's "any" is "required"
def test_bind_tools_with_a_forcing_tool_choice_calls_a_tool(llm, choice):
    message = llm.bind_tools([get_weather, search_web], tool_choice=choice).invoke(QUESTION)
    (call,) = message.tool_calls
    assert call["name"] == (choice if choice in ("get_weather", "search_web") else "get_weather")
    assert call["id"].startswith("call_") and isinstance(call["args"], dict) and call["args"]
    assert message.response_metadata["finish_reason"] == "tool_calls" and message.content == ""


@pytest.mark.parametrize("choice", ["auto", "none"])
def test_bind_tools_that_let_the_model_answer_in_words(llm, choice):
    message = llm.bind_tools([get_weather, search_web], tool_choice=choice).invoke("Hi!")
    assert message.tool_calls == [] and message.content and "<tool_call>" not in message.content


def test_streamed_tool_calls_add_up_to_the_invoked_ones(llm):
    bound = llm.bind_tools([get_weather, search_web], tool_choice="required")
    whole = bound.invoke(QUESTION)
    streamed = None
    for chunk in bound.stream(QUESTION):
        streamed = chunk if streamed is None else streamed + chunk
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [(c["name"], c["args"]) for c in whole.tool_calls]
    assert streamed.response_metadata["finish_reason"] == "tool_calls"


def test_a_tool_result_round_trip(llm):
    bound = llm.bind_tools([get_weather, search_web])
    asked = llm.bind_tools([get_weather, search_web], tool_choice="get_weather").invoke([HumanMessage(QUESTION)])
    (call,) = asked.tool_calls
    history = [HumanMessage(QUESTION), asked, ToolMessage(get_weather.invoke(call["args"]), tool_call_id=call["id"])]
    answer = bound.invoke(history)  # the assistant's call and the tool's result, sent back as LangChain writes them
    assert answer.content or answer.tool_calls
    assert "<tool_call>" not in answer.content and "<tool_response>" not in answer.content


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output(llm, method):
    city = llm.with_structured_output(City, method=method).invoke("Name a city in Switzerland as JSON.")
    assert isinstance(city, City) and city.name
