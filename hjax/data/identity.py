"""Which MNIST a run uses, as both protocols' run identities name it.

Real MNIST is only ever used after its content digest was checked against
:data:`hjax.data.schema.MNIST_SHA256`, so that constant names it (and naming it needs no
loading); fake MNIST is named by its own digest."""

from __future__ import annotations

import functools

from hjax.data.schema import MNIST_SHA256, digest
from hjax.data.synthetic import fake_mnist


@functools.lru_cache(maxsize=1)
def _fake_digest() -> str:
    return digest(fake_mnist())


def mnist_data_identity(fake_data: bool) -> dict:
    if fake_data:
        return {"source": "fake", "digest": _fake_digest()}
    return {"source": "mnist", "digest": MNIST_SHA256}
