"""The README's usage example runs as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_hessian_penalty_example_runs(capsys):
    text = README.read_text()
    match = re.search(r"<!-- example: hessian_penalty.*?-->\n```python\n(.*?)```", text, re.S)
    assert match, "README lost its hessian_penalty example"
    exec(compile(match.group(1), str(README), "exec"), {"__name__": "readme_example"})
    out = capsys.readouterr().out
    loss = float(re.search(r"loss after 5 steps: ([-0-9.naninf]+)", out).group(1))
    assert 0.0 < loss < 10.0


LIBRARY_DOC = README.parent / "docs" / "library.md"


def test_library_doc_nnx_example_runs_and_matches_the_closed_form(capsys):
    import jax
    import numpy as np

    import hjax

    text = LIBRARY_DOC.read_text()
    match = re.search(r"<!-- example: nnx.*?-->\n```python\n(.*?)```", text, re.S)
    assert match, "docs/library.md lost its NNX example"
    ns = {"__name__": "nnx_example"}
    exec(compile(match.group(1), str(LIBRARY_DOC), "exec"), ns)
    loss = float(re.search(r"loss after 5 steps: ([-0-9.naninf]+)",
                           capsys.readouterr().out).group(1))
    assert 0.0 < loss < 10.0
    # The penalty through nnx.merge equals the closed form on the head's plain arrays.
    model = ns["model"]
    features = jax.nn.relu(model.featurizer(ns["images"]))
    batches = {"features": features, "labels": ns["labels"]}
    head_params = ns["nnx"].state(model.head, ns["nnx"].Param)
    via_nnx = hjax.hessian_penalty(ns["head_loss"], head_params, batches, method="hgp")
    plain = {"kernel": model.head.kernel[...], "bias": model.head.bias[...]}
    closed = hjax.linear_head_penalty(plain, features, ns["labels"], method="hgp")
    assert float(closed) > 0
    np.testing.assert_allclose(via_nnx, closed, rtol=1e-4)
