"""Chat templates of the official Sa2VA checkpoints (the ``template`` field of their config).

Only the fields inference needs: the user-turn wrapper and the stop words. No system prompt is used.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChatTemplate:
    """One chat format: ``instruction`` wraps a user turn (``{input}``); generation stops at a stop word."""

    instruction: str
    stop_words: tuple[str, ...] = ()
    separator: str = "\n"

    def user_turn(self, text: str) -> str:
        return self.instruction.format(input=text)


TEMPLATES: dict[str, ChatTemplate] = {
    "internlm2_chat": ChatTemplate(
        "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n", ("<|im_end|>",)
    ),
    "qwen_chat": ChatTemplate(
        "<|im_start|>user\n{input}<|im_end|>\n<|im_start|>assistant\n", ("<|im_end|>", "<|endoftext|>")
    ),
    "phi3_chat": ChatTemplate("<|user|>\n{input}<|end|>\n<|assistant|>\n", ("<|end|>",)),
    "llama3_chat": ChatTemplate(
        "<|start_header_id|>user<|end_header_id|>\n\n{input}<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ("<|eot_id|>",),
    ),
    "vicuna": ChatTemplate("USER: {input} ASSISTANT:"),
}


def get_template(name: str) -> ChatTemplate:
    """Look up a template by the checkpoint's name for it (``-`` and ``_`` are equivalent, as officially)."""
    key = name.replace("-", "_")
    if key not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; known: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[key]
