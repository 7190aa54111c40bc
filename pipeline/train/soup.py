"""Model soup (Gemini Embedding): average the weights of several checkpoints of one model."""

from __future__ import annotations

from typing import Sequence

from pipeline.train.model import Encoder


def soup(model_dirs: Sequence[str], output: str, weights: Sequence[float] | None = None) -> str:
    if len(model_dirs) < 2:
        raise ValueError("a soup needs at least two checkpoints")
    weights = list(weights) if weights is not None else [1.0 / len(model_dirs)] * len(model_dirs)
    if len(weights) != len(model_dirs) or abs(sum(weights) - 1.0) > 1e-6:
        raise ValueError("give one weight per checkpoint, summing to 1")
    base = Encoder(model_dirs[0], device="cpu")
    states = [Encoder(d, device="cpu").state_dict() for d in model_dirs]
    keys = list(states[0])
    for path, state in zip(model_dirs, states):
        if list(state) != keys or any(state[k].shape != states[0][k].shape for k in keys):
            raise ValueError(f"{path} does not have the same architecture as {model_dirs[0]}")
    averaged = {}
    for key in keys:
        if states[0][key].is_floating_point():
            averaged[key] = sum(w * s[key].float() for w, s in zip(weights, states)).to(states[0][key].dtype)
        else:
            averaged[key] = states[0][key]  # integer buffers (e.g. position ids) are not averaged
    base.load_state_dict(averaged)
    base.save(output)
    return output
