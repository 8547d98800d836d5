"""What the model gateway's agents (tests/model_agent.py) make at their first call, made once
by the agents' server they are forks of (tests/warmforks.py, its preload): the official
OpenAI and Anthropic clients imported, and a client of each made with the parts a call
reaches (Chat Completions, Responses, Messages), whose modules and pydantic models each
library builds only at that first use, ~0.4 s of CPU that every fork made again. Nothing
is sent: a client connects at its first request."""

import anthropic
import openai

# (a key and a base URL of their own: the server's environment holds neither)
_openai = openai.OpenAI(api_key="warm", base_url="http://127.0.0.1:9/v1", max_retries=0)
_anthropic = anthropic.Anthropic(api_key="warm", base_url="http://127.0.0.1:9", max_retries=0)
WARMED = (_openai.chat.completions, _openai.responses, _anthropic.messages)
