"""LoRA adapters for stage 3 of a conversion (LoLCATs: end-to-end KD through low-rank adapters
instead of full fine-tuning of the inherited weights).

:func:`add_lora` wraps the converted model with PEFT LoRA adapters on the chosen linear layers
of the *converted* blocks (never inside a mixer); what then trains is the adapters and the
conversion's own new parameters (feature maps, gammas, MLA latents), every inherited weight
frozen. :func:`merge_lora` folds the adapters into the base weights and removes PEFT's layers,
so the model saves and loads exactly as a converted model trained without LoRA
(:func:`attnkd.convert.io.save_converted`; loading needs no peft).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from attnkd.convert.align import set_trainable
from attnkd.convert.mla import LatentKVAttention
from attnkd.convert.swap import converted_modules
from attnkd.errors import ConfigError
from attnkd.models.adapters import adapter_for, base_model

__all__ = [
    "LoraSetup",
    "add_lora",
    "lora_candidates",
    "lora_modules",
    "lora_parameters",
    "merge_lora",
]


@dataclass
class LoraSetup:
    """What :func:`add_lora` built: the PEFT wrapper (``merge_and_unload`` target), the full
    names of the wrapped linears and the parameters that train (adapters + new parameters)."""

    peft_model: nn.Module
    modules: list[str]
    trainable: list[nn.Parameter]


def lora_candidates(model: nn.Module) -> dict[str, nn.Linear]:
    """Full name -> linear layer of every ``nn.Linear`` in the converted blocks (MLA layers
    included), the conversion's new modules left out (mixers, latent projections): the names
    LoRA targets are matched against."""
    adapter, base = adapter_for(model), base_model(model)
    prefix = next((n + "." for n, m in model.named_modules() if m is base and n), "")
    latent = [m for m in model.modules() if isinstance(m, LatentKVAttention)]
    converted = converted_modules(model)
    layers = sorted({*converted, *(m.layer_idx for m in latent)})
    new = [c.mixer for c in converted.values()]
    new += [sub for m in latent for sub in (m.kv_down, m.kv_up)]
    skip = {id(sub) for m in new for sub in m.modules()}
    out: dict[str, nn.Linear] = {}
    for i in layers:
        block_path = prefix + adapter.layer_path(i)
        for name, m in model.get_submodule(block_path).named_modules():
            if isinstance(m, nn.Linear) and id(m) not in skip:
                out[f"{block_path}.{name}"] = m
    return out


def _match(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


def lora_modules(model: nn.Module, targets: list[str]) -> list[str]:
    """Full names of the linears of converted blocks that ``targets`` name (a target is a module
    name or its end, e.g. ``q_proj``, ``self_attn.o_proj``). Raises :class:`ConfigError` naming
    ``convert.lora.targets`` and listing the valid names when a target matches nothing."""
    candidates = lora_candidates(model)
    leaves = sorted({n.rsplit(".", 1)[-1] for n in candidates})
    chosen: list[str] = []
    for t in targets:
        hits = [n for n in candidates if _match(n, t)]
        if not hits:
            raise ConfigError(
                "convert.lora.targets",
                f"{t!r} names no linear layer of the converted blocks; valid names: {leaves}",
            )
        chosen += [n for n in hits if n not in chosen]
    return chosen


def add_lora(
    model: nn.Module, rank: int, alpha: float, dropout: float, targets: list[str]
) -> LoraSetup:
    """Inject LoRA adapters (rank ``rank``, scale ``alpha / rank``) into ``model`` in place on
    the linears :func:`lora_modules` picks; freeze everything but the adapters and the
    conversion's new parameters."""
    from peft import LoraConfig, get_peft_model

    chosen = lora_modules(model, targets)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=chosen,
                        bias="none")  # fmt: skip
    peft_model = get_peft_model(model, config)
    try:  # freezes all but the new parameters (the adapters too)
        new = set_trainable(model, "mixer")
    except ValueError:  # window / shared conversions add no parameters
        new = []
        for p in model.parameters():
            p.requires_grad_(False)
    adapters = lora_parameters(model)
    for p in adapters:
        p.requires_grad_(True)
    trainable = list({id(p): p for p in [*adapters, *new]}.values())
    return LoraSetup(peft_model=peft_model, modules=chosen, trainable=trainable)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA adapter parameters PEFT injected into ``model`` (``lora_A`` / ``lora_B``)."""
    return [p for n, p in model.named_parameters() if ".lora_A." in n or ".lora_B." in n]


def merge_lora(setup: LoraSetup) -> nn.Module:
    """Fold the adapters into the base weights (W + B A * alpha / rank) and remove PEFT's
    layers; returns the plain converted model (the same object :func:`add_lora` was given)."""
    return setup.peft_model.merge_and_unload()
