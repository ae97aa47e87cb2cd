"""RP-CoMHE's projections: ``C`` Gaussian ``k x d`` matrices per layer, redrawn every call, from one ``randn`` on the
projection's own generator (its state in ``state_dict``). See the package docstring."""
from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import Tensor

from ..stacking import Stack
from .base import Projection, shape_major


class RandomProjection(Projection):
    def __init__(self, proj_dim: int = 40, num_proj: int = 20, seed: Optional[int] = None, **_ignored):
        super().__init__(proj_dim, num_proj)
        self.seed = int(torch.initial_seed() if seed is None else seed)
        self._generator: Optional[torch.Generator] = None
        self._pending_state: Optional[Tuple[str, Tensor]] = None

    def setup(self, stacker, buckets, dtype, device) -> None:
        super().setup(stacker, buckets, dtype, device)
        # The draw: C*k*d values per layer, layers grouped by shape in order of first appearance (the order of the
        # draws before the stack existed, so a seed gives the same matrices as then). Each bucket is a run of it.
        order = shape_major(stacker, [i for b in self.buckets for i in stacker.buckets[b].layers])
        chunk = {i: self.num_proj * self.proj_dim * stacker.layers[i].fan_in for i in order}
        start = {i: sum(chunk[j] for j in order[:n]) for n, i in enumerate(order)}
        self.draw_size = sum(chunk.values())
        self._runs: List[Tuple[int, Optional[str]]] = []  # per bucket: start, or the buffer of its gather index
        for n_bucket, b in enumerate(self.buckets):
            mine = stacker.buckets[b].layers
            first = start[mine[0]]
            if all(start[i] == first + n * chunk[mine[0]] for n, i in enumerate(mine)):
                self._runs.append((first, None))
            else:
                index = torch.cat([start[i] + torch.arange(chunk[i]) for i in mine]).to(device)
                self.register_buffer(f"draw_index{n_bucket}", index, persistent=False)
                self._runs.append((first, f"draw_index{n_bucket}"))

    def generator(self, device: torch.device) -> torch.Generator:
        gen = self._generator
        if gen is None or gen.device.type != device.type or (device.index is not None and gen.device != device):
            gen = torch.Generator(device=device)
            gen.manual_seed(self.seed)
            if self._pending_state is not None and self._pending_state[0] == device.type:
                gen.set_state(self._pending_state[1])
            self._pending_state = None
            self._generator = gen
        return gen

    def matrices(self, stack: Optional[Stack], lr: Optional[float] = None) -> List[Tensor]:
        device, dtype = self.stacker.zeros.device, self.stacker.zeros.dtype  # the compute dtype, as it is now
        flat = torch.randn(self.draw_size, generator=self.generator(device), device=device, dtype=dtype)
        mats = []
        for b, (first, index) in zip(self.buckets, self._runs):
            layers, _, d = self.stacker.buckets[b].shape
            values = flat.narrow(0, first, layers * self.num_proj * self.proj_dim * d) if index is None else \
                flat.index_select(0, getattr(self, index))
            mats.append(values.view(layers, self.num_proj, self.proj_dim, d))
        return mats

    # The generator's state travels in state_dict, so a checkpoint resumes the exact sequence of draws.
    def get_extra_state(self):
        if self._generator is not None:
            return {"seed": self.seed, "device": self._generator.device.type, "state": self._generator.get_state()}
        pending = self._pending_state
        return {"seed": self.seed, "device": pending[0] if pending else "", "state": pending[1] if pending else None}

    def set_extra_state(self, state) -> None:
        self.seed = int(state["seed"])
        self._generator = None
        saved = state.get("state")
        # .cpu(): Generator.set_state takes a CPU byte tensor whatever the generator's device, and a checkpoint
        # loaded with map_location="cuda" hands over a CUDA one.
        self._pending_state = (state["device"], saved.cpu()) if saved is not None else None
