"""What an agent's worker reports it spent on its models (`usage/report`): tokens in and
out and dollars, in total and per model; kept on a task and per agent (budget.py)."""

from __future__ import annotations

import msgspec


# gc=False: scalars, and a dict of names to scalars, can be in no cycle; a finished task
# that reported usage then adds nothing for the cyclic collector to walk (manager.finish)
class Usage(msgspec.Struct, gc=False):
    """Tokens and dollars reported, and how many reports made them."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    reports: int = 0

    def add(self, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        self.input_tokens += input_tokens
        self.output_tokens += output_tokens
        self.cost_usd += cost_usd
        self.reports += 1


class ModelUsage(Usage, gc=False):
    """Usage in total and per model (a task's, an agent's since the daemon started)."""

    models: dict[str, Usage] = {}

    def add_model(self, model: str, input_tokens: int, output_tokens: int,
                  cost_usd: float) -> None:
        self.add(input_tokens, output_tokens, cost_usd)
        one = self.models.get(model)
        if one is None:
            # (not the shared default: msgspec copies a mutable default per instance)
            one = self.models[model] = Usage()
        one.add(input_tokens, output_tokens, cost_usd)
