"""Prompt templates. The default is the seeds' Chinese QA template, used for training, scoring and inference
alike (the predecessor's inference copy had a typo, "根据一下问题"; there is one template here)."""
from __future__ import annotations

DEFAULT_TEMPLATE = "根据以下问题，写一个合适的回答。\n\n### 问题：\n{instruction}\n\n### 回答：\n{response}"


def format_prompt(instruction: str, response: str = "", template: str = DEFAULT_TEMPLATE) -> str:
    """Fill the template; with an empty ``response`` the result is the prompt the model continues."""
    return template.format(instruction=instruction, response=response)
