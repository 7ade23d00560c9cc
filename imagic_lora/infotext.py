"""Generation parameters as AUTOMATIC1111 "infotext", the ``parameters`` text that PNG Info and civitai read.

    <prompt>
    Negative prompt: <negative prompt>
    Steps: 50, Sampler: DDIM, CFG scale: 7.5, Seed: 0, Size: 512x512, Model hash: …, Model: …, Imagic …

A value holding ``,``, ``:`` or a newline is written as a JSON string, as A1111 quotes it; the
imagic-lora fields follow as extra ``Key: value`` pairs. The full JSON goes in a chunk of its own.
"""

from __future__ import annotations

import json


def quote(value) -> str:
    """A1111's quoting: plain unless the text would break the ``Key: value, …`` line."""
    text = str(value)
    if not any(mark in text for mark in (",", ":", "\n", '"')):
        return text
    return json.dumps(text, ensure_ascii=False)


def _listed(value) -> str:
    return ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value) if isinstance(value, list) \
        else (f"{value:g}" if isinstance(value, float) else str(value))


def infotext(parameters: dict) -> str:
    """The A1111 infotext for one output's ``parameters`` (the dict the PNG's JSON chunk holds)."""
    fields = {
        "Steps": parameters["steps"], "Sampler": "DDIM", "CFG scale": _listed(parameters["guidance"]),
        "Seed": _listed(parameters["seed"]), "Size": f"{parameters['size']}x{parameters['size']}",
        "Model hash": parameters["model_hash"], "Model": parameters["model"],
        "Imagic profile": parameters["profile"], "Imagic source prompt": parameters["source_prompt"],
        "Imagic alpha": _listed(parameters["alpha"]), "Imagic start": parameters["start"],
        "Imagic keep": _listed(parameters.get("keep", "off")), "Version": parameters["generator"],
    }
    lines = [parameters["prompt"].replace("\n", " ")]
    if parameters["negative_prompt"]:
        lines.append("Negative prompt: " + parameters["negative_prompt"].replace("\n", " "))
    lines.append(", ".join(f"{key}: {quote(value)}" for key, value in fields.items()))
    return "\n".join(lines)
