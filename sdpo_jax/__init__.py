"""sdpo_jax: Self-Distillation Policy Optimization (Hübotter et al., 2026) in JAX."""

__version__ = "0.1.0"
