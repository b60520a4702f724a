"""Hugging Face hub access shared by data and models: pretrained weights downloaded once into the user's cache,
read from it afterwards and whenever `HF_HUB_OFFLINE=1`. A failure is one line that names the field and the ways out."""

from __future__ import annotations

from pathlib import Path

from hosfl_sim.config import ConfigError

# `task.model.weights` names for hub files: ImageNet ResNet-18 is torchvision's IMAGENET1K_V1, as the paper's code
# loads it, in the timm repository that carries it as safetensors (torchvision's module names).
HUB_WEIGHTS = {"imagenet": ("timm/resnet18.tv_in1k", "model.safetensors")}


def hub_offline() -> bool:
    """Whether the hub may not be reached (`HF_HUB_OFFLINE`): then only the cache and local files serve."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def hub_error(field: str, value: str, error: BaseException) -> ConfigError:
    """The one line for a hub failure: a gated model wants a token; a missing file wants the network or a path."""
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(error, GatedRepoError) or "gated" in str(error).lower():
        expected = (
            "a Hugging Face token with access to this gated model (accept its licence; `hf auth login` or HF_TOKEN)"
        )
    elif isinstance(error, RepositoryNotFoundError):
        expected = "a Hugging Face model id that exists, or a local path"
    else:
        how = "unset HF_HUB_OFFLINE and run once online" if hub_offline() else "run once with network access"
        expected = f"files in the Hugging Face cache ({how}: they download into it), or a local path instead"
    return ConfigError(field, value, f"{expected} [{type(error).__name__}]")


def hub_file(field: str, name: str) -> Path:
    """The local path of the hub file `name` stands for (HUB_WEIGHTS), from the cache or downloaded into it."""
    from huggingface_hub import hf_hub_download

    repo_id, filename = HUB_WEIGHTS[name]
    try:
        return Path(hf_hub_download(repo_id, filename, local_files_only=hub_offline()))
    except Exception as e:  # offline, not cached, gated, network down: all become one line
        raise hub_error(field, name, e) from None
