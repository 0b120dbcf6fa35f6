"""The native model of a model export, rebuilt from DIR/spec.json (the factory, its kwargs and
seed) and the exact weights exported (DIR/weights.pt or weights.weights.h5): for native
latency (convert.native_server) and checks. Imports the one framework spec.json names."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from train.core.errors import ArtifactError
from train.core.spec import ModelSpec, check_factory, read_spec_json


def load_native(folder: Path) -> tuple[str, Callable[[dict[str, np.ndarray]],
                                                     dict[str, np.ndarray]]]:
    """(framework, run): `run` maps named inputs (numpy) to the native model's named outputs
    (numpy), the names of spec.json's inputs and outputs."""
    from convert.byom import factory
    from convert.byom.export import make_side

    folder = Path(folder)
    doc = read_spec_json(folder)
    weights = folder / doc["weights"]
    if not weights.is_file():
        raise ArtifactError(f"{weights}: missing (the weights of {doc['name']})")
    spec = ModelSpec(factory=check_factory(doc["factory"], str(folder / "spec.json")),
                     name=doc["name"], kwargs=dict(doc["kwargs"]), seed=int(doc["seed"]),
                     origin=str(folder / "spec.json"))
    framework, model = factory.build(spec)
    if framework != doc["framework"]:
        raise ArtifactError(f"{folder / 'spec.json'}: {spec.factory} now returns a {framework} "
                            f"model; the export was {doc['framework']}")
    side = make_side(framework, model, spec)
    side.load_checkpoint(weights)
    names = [o["name"] for o in doc["outputs"]]
    order = [i["name"] for i in doc["inputs"]]
    if framework == "torch":
        import torch

        torch.set_grad_enabled(False)  # this process only ever runs inference

    call = side.serving()  # as a deployed model runs (Keras: traced, not layer by layer)

    def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = call({k: feeds[k] for k in order})
        return {k: result[k] for k in names}

    return framework, run
