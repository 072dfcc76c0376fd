"""Prompt templates.

- ``qa`` (the SFT and preference converters' default): the seeds' Chinese QA template, used for training, scoring
  and inference alike (the predecessor's inference copy had a typo, "根据一下问题"; there is one template here).
- ``chatml``: the ChatML chat template of Qwen2 / Qwen2.5 instruct models, one system turn and one user turn, then
  the assistant cue the model continues (what ``tokenizer.apply_chat_template(messages,
  add_generation_prompt=True)`` gives for ``[{"role": "user", "content": question}]`` with the Qwen2 default system
  message).
- ``none``: the text as is.

:func:`apply_template` applies one of them by name; the prompt converter's ``--template`` flag takes these names.
"""

from __future__ import annotations

DEFAULT_TEMPLATE = "根据以下问题，写一个合适的回答。\n\n### 问题：\n{instruction}\n\n### 回答：\n{response}"
CHATML_SYSTEM = "You are a helpful assistant."
CHATML_TEMPLATE = (
    "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
)
TEMPLATE_NAMES = ("none", "qa", "chatml")


def format_prompt(instruction: str, response: str = "", template: str = DEFAULT_TEMPLATE) -> str:
    """Fill the template; with an empty ``response`` the result is the prompt the model continues."""
    return template.format(instruction=instruction, response=response)


def format_chatml(question: str, system: str = CHATML_SYSTEM) -> str:
    """The ChatML prompt of one user turn, ending in the assistant cue ``<|im_start|>assistant\\n``."""
    return CHATML_TEMPLATE.format(system=system, question=question)


def apply_template(name: str, text: str) -> str:
    """``text`` in the template ``name`` (one of :data:`TEMPLATE_NAMES`): ``qa`` and ``chatml`` wrap the stripped
    text, ``none`` returns it unchanged. Raises ``ValueError`` for another name."""
    if name == "none":
        return text
    if name == "qa":
        return format_prompt(text.strip())
    if name == "chatml":
        return format_chatml(text.strip())
    raise ValueError(f"unknown template {name!r}; expected one of {', '.join(TEMPLATE_NAMES)}")
