"""The optional C kernel for CPU dequantization; everything else is in pyproject.toml.

`optional=True`: without a C compiler the install still succeeds and dequant falls back to plain torch.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vllm_mlx_loader._cdequant",
            ["vllm_mlx_loader/_cdequant.c"],
            # no FMA contraction: the kernel must round exactly where the torch path rounds
            extra_compile_args=["-O3", "-ffp-contract=off"],
            optional=True,
        )
    ]
)
