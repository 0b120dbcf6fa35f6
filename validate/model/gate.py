"""The parity gate for a model's outputs, whatever they hold (probabilities, logits of any
magnitude, embeddings, integer ids). numpy only.

The rule, per runtime and per float output `o` of the graph:

    max |runtime_o - native_o|  <=  limit_o = max(tol x scale_o, FLOOR_FACTOR x floor_o)

- `tol` is the runtime's documented tolerance (1e-5 for onnxruntime CPU, Node and WASM, 2e-5
  for OpenVINO and tract, 1e-4 for CUDA; --atol / --cuda-atol override it), read here as a
  tolerance *relative to the output's magnitude*: `scale_o` = max |native_o| over every input.
  For probabilities (max close to 1) this is LeNet-5's absolute gate; logits of magnitude 30
  get 30 times the room, because float32 rounding grows with the values it rounds.
- `floor_o` is the graph's own float32 noise on the float64 subset: the smallest, over the
  float32 runtimes that ran, of max |runtime_o - exact_o| (exact: the ONNX reference
  evaluator on a float64 copy of the graph). The smallest, so that one faulty runtime cannot
  loosen anyone's gate; from runtimes, never from the native model, so that a fault in the
  graph (which moves the native output away from the graph's exact answer) cannot loosen it
  either. It lets a deep model whose rounding noise nears tol x scale pass without a flag.
- Integer and boolean outputs must be equal, element for element.
- For a 2-D float output with at least two columns, the top-1 index per row is compared too.
  A flip is excused as a *tie* when the native model's own margin between its two best
  columns is at most 2 x limit_o: noise within the gate can swap those two, and nothing
  else can. Ties are counted and listed; other flips count against --min-agreement.

Why these numbers (measured here, onnxruntime 1.32 / OpenVINO / tract / onnxruntime-node /
onnxruntime-web against PyTorch 2.14, the first 48 Fashion-MNIST images resized to the input):
max |runtime - native| / scale was 1e-7 to 3e-7 for a 2-conv CNN with BatchNorm (logits up to
0.36), 1.5e-7 for a two-input two-output model (logits 0.31, embedding 1.19), 1.2e-6 to 1.5e-6
for torchvision resnet18 (logits 1.03), 1e-6 for mobilenet_v3_small (logits 0.0115): between 7
and 100 times below tol x scale with tol = 1e-5. The float64 floor (min over runtimes of
max |runtime - exact| on 16 inputs) was 1.7e-8, 2.6e-8 / 7e-8, 6.1e-7 and 6e-9 for those
models, and max |runtime - native| was 2 to 6.2 times that floor, so FLOOR_FACTOR = 20 leaves
a factor of 3 or more where the floor decides (a subset's floor underestimates the whole
set's). A weight of one layer changed after export moves the output by 1e-3 to 1e-1 of its
scale: 100 to 10,000 times over the gate.
"""

from __future__ import annotations

import numpy as np

FLOOR_FACTOR = 20.0
HISTOGRAM_EDGES = [0.0] + [10.0 ** e for e in range(-12, 1)]  # relative |diff| bins


def is_float(a: np.ndarray) -> bool:
    return a.dtype.kind in "fc"


def scale(reference: np.ndarray) -> float:
    """max |value| of an output over every input (0 for an empty or non-float output)."""
    if not is_float(reference) or reference.size == 0:
        return 0.0
    return float(np.abs(reference.astype(np.float64)).max())


def limit(tolerance: float, scale_: float, floor: float | None) -> float:
    """The largest |runtime - native| allowed for one output (see the module docstring)."""
    return max(tolerance * scale_, FLOOR_FACTOR * floor if floor else 0.0)


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| in float64 (NaN when either holds one; 0 for empty arrays)."""
    if a.size == 0:
        return 0.0
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max())


def floors(exact: dict[str, np.ndarray] | None, ran: list[dict[str, np.ndarray]]
           ) -> dict[str, float | None]:
    """Per float output, the smallest max |runtime - exact| over the float32 runtimes in RAN
    (each an output dict holding at least len(exact) rows), or None without an exact run."""
    if not exact:
        return {}
    out: dict[str, float | None] = {}
    for name, want in exact.items():
        m = len(want)
        diffs = [max_diff(r[name][:m], want) for r in ran if name in r and len(r[name]) >= m]
        diffs = [d for d in diffs if np.isfinite(d)]
        out[name] = min(diffs) if diffs and is_float(want) else None
    return out


def _top1(got: np.ndarray, ref: np.ndarray, lim: float) -> dict:
    """Flips of the top-1 index, and which of them are ties within the gate."""
    flips = np.flatnonzero(got.argmax(1) != ref.argmax(1))
    top2 = np.sort(ref.astype(np.float64), axis=1)[:, -2:]
    margin = top2[:, 1] - top2[:, 0]
    ties = [int(i) for i in flips if margin[i] <= 2 * lim]
    return {"flips": flips.tolist(), "flip_count": int(len(flips)), "ties": ties,
            "top1_agreement": 1.0 - len(flips) / max(1, len(got))}


def compare_output(got: np.ndarray, ref: np.ndarray, lim: float, scale_: float) -> dict:
    """One output of one runtime against the native one (REF already cut to GOT's rows)."""
    if got.shape != ref.shape:
        return {"passed": False, "reason": f"shape {list(got.shape)} vs native "
                f"{list(ref.shape)}", "max_abs_diff": None}
    if not (is_float(got) or is_float(ref)):
        wrong = int((got != ref).sum())
        return {"kind": "exact", "passed": wrong == 0, "mismatches": wrong,
                "max_abs_diff": max_diff(got, ref), "limit": 0.0}
    d = max_diff(got, ref)
    rec = {"kind": "float", "max_abs_diff": d,
           "mean_abs_diff": float(np.abs(got.astype(np.float64) - ref).mean()) if got.size
           else 0.0, "scale": scale_, "limit": lim,
           "relative": d / scale_ if scale_ > 0 else d, "passed": bool(d <= lim)}
    if got.ndim == 2 and got.shape[1] >= 2:
        rec |= _top1(got, ref, lim)
    return rec


def relative_histogram(pairs: list[tuple[np.ndarray, np.ndarray, float]]) -> dict:
    """Counts of |diff| / scale per decade over every float output, for the report's plot."""
    parts = [np.abs(g.astype(np.float64) - r).ravel() / (s if s > 0 else 1.0)
             for g, r, s in pairs if is_float(g) and g.shape == r.shape]
    diff = np.concatenate(parts) if parts else np.zeros(0)
    counts, _ = np.histogram(np.clip(diff, 0, 1), bins=HISTOGRAM_EDGES)
    return {"edges": HISTOGRAM_EDGES, "counts": counts.tolist(), "relative": True}
