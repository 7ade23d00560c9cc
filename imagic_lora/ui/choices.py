"""The web app's fixed choices, importable before torch is: the page is built from them while it loads."""

from ..config import STARTS, TrainConfig

# schedules of the shapes benchmark (README, Performance): the default, and two longer ones for harder photos
PRESETS: dict[str, TrainConfig] = {
    "quick: 50 + 100 steps (the default)": TrainConfig(),
    "longer: 100 + 200 steps": TrainConfig(embedding_steps=100, embedding_lr=1e-2, lora_steps=200, lora_lr=1e-3),
    "like the SD ports: 500 + 500 steps": TrainConfig(embedding_steps=500, embedding_lr=1e-3, lora_steps=500,
                                                      lora_lr=1e-4),
}
EXPORTS = ("profile", "LoRA, diffusers", "LoRA, kohya")
__all__ = ["EXPORTS", "PRESETS", "STARTS"]
