"""The ground floor: which array module, which device, which random numbers.

* ``devices``: the one NumPy/CuPy switch (``get_array_module``), device
  strings and moving arrays between devices;
* ``random``: the seeded random streams of the host and of each GPU.

Everything above it (the Tensor, the ops, the layers) imports from here.
"""
from .devices import (cupy_or_none, device_of, get_array_module, gpu_problem,
                      is_cuda_available, parse_device, to_device, to_numpy)
from .random import (default_generator, generator_for, get_rng_state, manual_seed,
                     set_rng_state)

__all__ = ["get_array_module", "cupy_or_none", "is_cuda_available", "gpu_problem", "parse_device",
           "device_of", "to_device", "to_numpy", "manual_seed", "default_generator",
           "generator_for", "get_rng_state", "set_rng_state"]
