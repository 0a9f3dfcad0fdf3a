"""Tensor ops of the generation path, each a torch reference plus a Triton kernel.

One module per op (`attention`, `sampling`, `vocab_stats`, `resampling`): the torch
`reference` is the specification; the Triton kernel computes the same thing on CUDA; one
dispatcher picks the kernel for CUDA tensors and the reference elsewhere (`impl="auto"`),
or either on request (`impl="reference"` / `impl="triton"`; the Triton path runs on CPU
under `TRITON_INTERPRET=1`, which must be set before these modules are imported).

Only torch and triton are imported here and in the op modules (relative imports between
them), so the folder also imports standalone as `kernels` (benchmarks/kernel_speed.py does).
"""
