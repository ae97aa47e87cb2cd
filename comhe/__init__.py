"""comhe: hyperspherical-energy regularisers (MHE, HS-MHE, CoMHE) for PyTorch, and the suite that reproduces them.

    import comhe
    reg = comhe.regularizers.build("rp_comhe", model)   # any nn.Module with conv / linear layers
    loss = task_loss + reg(lr=current_lr)[0]
"""
from . import energy, layers, projections, regularizers  # noqa: F401  (the library: torch only)
from .energy import hyperspherical_energy, layer_energies  # noqa: F401

__version__ = "0.1.0"
