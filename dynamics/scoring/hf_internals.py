"""What the scorer needs of transformers beyond its documented API, in one place.

The scoring tests pass on transformers 4.56.2, 4.57.6, 5.0.0 and 5.24.0 (pyproject's floor is 4.56;
4.55.4 fails):
  * the KV cache of a forward pass with use_cache=True is a Cache whose `.layers[i]` hold
    `.keys` and `.values` tensors [B, H, T, D] (the DynamicCache layout since 4.56);
  * a model's attention goes through the function registered under
    `model.config._attn_implementation` (a private attribute) in `AttentionInterface`, and the
    model code passes extra forward keyword arguments through to it (true of GPT-NeoX, Llama and
    GPT-2 in those releases).
If a future release changes either, only this module needs to follow it.
"""

from __future__ import annotations

from contextlib import contextmanager


def output_cache(out):
    """The KV cache of a model output: `cache` from transformers 5.x on (reading the older name
    `past_key_values` there logs a deprecation warning), `past_key_values` before."""
    return out["cache"] if "cache" in out else out.past_key_values


def cache_layers(cache) -> list[tuple]:
    """(keys, values) [B, H, T, D] of every layer of a forward pass's KV cache."""
    return [(layer.keys, layer.values) for layer in cache.layers]


@contextmanager
def attention_implementation(model, name: str, function):
    """Route the model's attention through `function` (registered as `name`) inside the block."""
    from transformers import AttentionInterface

    AttentionInterface.register(name, function)
    previous = model.config._attn_implementation
    model.config._attn_implementation = name
    try:
        yield
    finally:
        model.config._attn_implementation = previous
