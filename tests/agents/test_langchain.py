"""LangChain's ChatAnthropic and ChatOpenAI(use_responses_api=True), unmodified, pointed at
tokenmill: plain answers, streams and a bound tool."""
from langchain_anthropic import ChatAnthropic
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI

from agents.conftest import KEY


@tool
def get_weather(city: str) -> str:
    """Current weather in a city."""
    return "sunny"


def models(s):
    return [ChatAnthropic(model=s.model, base_url=s.url, api_key=KEY, max_tokens=24, temperature=0, max_retries=0),
            ChatOpenAI(model=s.model, base_url=s.url + "/v1", api_key=KEY, use_responses_api=True, temperature=0,
                       max_tokens=24, max_retries=0)]


def _text(message) -> str:
    c = message.content
    return c if isinstance(c, str) else "".join(p.get("text", "") for p in c if isinstance(p, dict))


def test_invoke_and_stream(smol_agents):
    for chat in models(smol_agents):
        answer = chat.invoke("Name a colour.")
        assert _text(answer), type(chat).__name__
        assert answer.usage_metadata["input_tokens"] > 0 and answer.usage_metadata["output_tokens"] > 0
        streamed = "".join(_text(chunk) for chunk in chat.stream("Name a colour."))
        assert streamed == _text(answer), type(chat).__name__


def test_bound_tool(smol_agents):
    for chat in models(smol_agents):
        chat.max_tokens = 80
        msg = chat.bind_tools([get_weather], tool_choice="get_weather", parallel_tool_calls=False) \
            .invoke("What is the weather in Paris?")
        assert [c["name"] for c in msg.tool_calls] == ["get_weather"], type(chat).__name__
        assert isinstance(msg.tool_calls[0]["args"].get("city"), str)
