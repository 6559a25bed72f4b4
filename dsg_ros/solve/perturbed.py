"""Which graph leaves a custom derivative rule has to differentiate.

With ``symbolic_zeros``, a custom VJP's forward rule sees every input leaf as
``(value, perturbed)``: perturbed leaves are those the parameters θ flow
into (in HERO, two measurement arrays out of the graph's thirty leaves).
The backward rules differentiate only those, and only the slabs holding
them; this module is the bookkeeping they share.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import jax_dataclasses as jdc
from jax.custom_derivatives import SymbolicZero

from dsg_ros.world.graph import Graph


@jdc.pytree_dataclass
class Perturbed:
    """Flags per graph leaf (flattened order) and per slab; static, so it can
    travel in a custom VJP's residuals."""

    leaves: jdc.Static[tuple[bool, ...]]
    slabs: jdc.Static[tuple[bool, ...]]

    @staticmethod
    def of(graph: Graph) -> Perturbed:
        """From a graph whose leaves are ``CustomVJPPrimal`` (a forward rule's input)."""
        return Perturbed(
            leaves=tuple(bool(leaf.perturbed) for leaf in jax.tree.leaves(graph)),
            slabs=tuple(any(leaf.perturbed for leaf in jax.tree.leaves(slab)) for slab in graph.slabs),
        )

    def split(self, graph: Graph) -> tuple[list[jax.Array], Callable[[list[jax.Array]], Graph]]:
        """The perturbed leaves' values, and ``values ↦ graph`` with them replaced."""
        leaves, treedef = jax.tree.flatten(graph)
        varying = [i for i, flag in enumerate(self.leaves) if flag]

        def rebuild(values: list[jax.Array]) -> Graph:
            merged = list(leaves)
            for i, value in zip(varying, values):
                merged[i] = value
            return jax.tree.unflatten(treedef, merged)

        return [leaves[i] for i in varying], rebuild

    def cotangent(self, graph: Graph, grads: list[jax.Array]) -> Graph:
        """A graph-shaped cotangent: ``grads`` at the perturbed leaves, ``None`` (zero) elsewhere."""
        leaves, treedef = jax.tree.flatten(graph)
        out: list[jax.Array | None] = [None] * len(leaves)
        for i, grad in zip((i for i, flag in enumerate(self.leaves) if flag), grads):
            out[i] = grad
        return jax.tree.unflatten(treedef, out)


def values(primals: Any) -> Any:
    """The values of a forward rule's ``CustomVJPPrimal`` leaves."""
    return jax.tree.map(lambda leaf: leaf.value, primals)


def any_perturbed(primals: Any) -> bool:
    return any(leaf.perturbed for leaf in jax.tree.leaves(primals))


def materialize(cotangent: Any) -> Any:
    """Cotangents as arrays: symbolic zeros become zeros."""
    return jax.tree.map(lambda ct: jnp.zeros(ct.shape, ct.dtype) if isinstance(ct, SymbolicZero) else ct, cotangent)
