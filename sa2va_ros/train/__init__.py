"""The Sa2VA training recipe (next-token CE + mask BCE + Dice) on accelerate; ROS-free."""

from .config import LoraSettings, TrainConfig, load_train_config
from .loop import train

__all__ = ["LoraSettings", "TrainConfig", "load_train_config", "train"]
