"""ONNX export: the model as a step graph (Gather → one ONNX GRU op per layer → Gemm) plus its tokenizer as JSON.

The graph's inputs are `tokens` (seq, batch) int64 and `hidden` (layers, batch, hidden_size) float32;
its outputs are `logits` (seq, batch, vocab) and `hidden_out` (layers, batch, hidden_size). One call
with seq = 1 is one sampling step; one call with the whole prompt primes the state.

Both GRU forms map onto ONNX's own GRU op, whose gates are ordered z, r, h (torch: r, z, n) and whose
update is H' = (1 − z) ⊙ h + z ⊙ H:
- `reset_after=True` (torch.nn.GRU) is `linear_before_reset=1`, weights reordered.
- `reset_after=False` (the seed form: h̃ = tanh(W x + U (r ⊙ h) + b), H' = (1 − z) ⊙ H + z ⊙ h̃) is
  `linear_before_reset=0` with z's role swapped: 1 − σ(a) = σ(−a), so the z rows of W, R and both
  biases are negated and the op's own update then computes the seed's.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from generate.checkpoint import build_model, build_tokenizer, check_export_target, load_checkpoint, resolve_checkpoint
from generate.errors import UserError
from generate.gru import layer_weights
from generate.model import GRULanguageModel

OPSET = 17  # GRU, Gather, Gemm and Squeeze-with-axes-input all exist here; onnxruntime ≥ 1.13 runs it
IR_VERSION = 8  # the IR version of opset 17, so older runtimes accept the file
TOKENIZER_SUFFIX = ".tokenizer.json"


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise UserError('format=onnx needs the onnx package: pip install "gru-generate[onnx]" (or pip install onnx)') from None
    return onnx


def onnx_gate_weights(w: np.ndarray, hidden: int, negate_z: bool) -> np.ndarray:
    """torch's gate rows (r, z, n) → ONNX's (z, r, h) along axis 0; z negated for the seed form."""
    r, z, n = w[:hidden], w[hidden : 2 * hidden], w[2 * hidden :]
    return np.concatenate([-z if negate_z else z, r, n]).astype(np.float32)


def _layer_tensors(model: GRULanguageModel) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per layer: ONNX GRU's W (1, 3H, in), R (1, 3H, H) and B (1, 6H) = [Wb, Rb]."""
    hidden, negate_z = model.spec.hidden_size, not model.spec.reset_after
    out = []
    for w_ih, w_hh, b_ih, b_hh in layer_weights(model.rnn):
        w, r, wb, rb = (onnx_gate_weights(t.detach().float().cpu().numpy(), hidden, negate_z) for t in (w_ih, w_hh, b_ih, b_hh))
        out.append((w[None], r[None], np.concatenate([wb, rb])[None]))
    return out


def build_graph(model: GRULanguageModel) -> Any:
    """The ONNX ModelProto of `model` as a step graph (see the module docstring for inputs and outputs)."""
    spec = model.spec
    cells = ["model.layer_norm=true"] * spec.layer_norm + [f"model.zoneout={spec.zoneout:g}"] * (spec.zoneout > 0)
    if cells:  # the training-only regularizers (dropouts, weight drop) change nothing at inference and export
        raise UserError(f"format=onnx cannot export a model trained with {' and '.join(cells)} (ONNX's GRU operator "
                        "has no such cell); export it with format=pt, or train without it")
    onnx = _require_onnx()
    from onnx import TensorProto, helper, numpy_helper

    init = [
        numpy_helper.from_array(model.embedding.weight.detach().float().cpu().numpy(), "embedding"),
        numpy_helper.from_array(model.head.weight.detach().float().cpu().numpy().T.copy(), "head_w_t"),
        numpy_helper.from_array(model.head.bias.detach().float().cpu().numpy(), "head_b"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [helper.make_node("Gather", ["embedding", "tokens"], ["x0"], axis=0)]  # (seq, batch, E)
    x, finals = "x0", []
    for layer, (w, r, b) in enumerate(_layer_tensors(model)):
        init += [numpy_helper.from_array(a, f"{name}{layer}") for a, name in ((w, "W"), (r, "R"), (b, "B"))]
        init.append(numpy_helper.from_array(np.array([layer], dtype=np.int64), f"layer{layer}"))
        nodes += [
            helper.make_node("Gather", ["hidden", f"layer{layer}"], [f"h0_{layer}"], axis=0),  # (1, batch, H)
            helper.make_node(
                "GRU", [x, f"W{layer}", f"R{layer}", f"B{layer}", "", f"h0_{layer}"], [f"y{layer}", f"hn{layer}"],
                hidden_size=spec.hidden_size, linear_before_reset=int(spec.reset_after),
            ),  # y: (seq, 1, batch, H), hn: (1, batch, H)
            helper.make_node("Squeeze", [f"y{layer}", "axis1"], [f"x{layer + 1}"]),  # (seq, batch, H)
        ]
        x = f"x{layer + 1}"
        finals.append(f"hn{layer}")
    nodes += [
        helper.make_node("MatMul", [x, "head_w_t"], ["scores"]),
        helper.make_node("Add", ["scores", "head_b"], ["logits"]),
        helper.make_node("Concat", finals, ["hidden_out"], axis=0),
    ]
    graph = helper.make_graph(
        nodes, "gru_language_model",
        inputs=[
            helper.make_tensor_value_info("tokens", TensorProto.INT64, ["seq", "batch"]),
            helper.make_tensor_value_info("hidden", TensorProto.FLOAT, [spec.num_layers, "batch", spec.hidden_size]),
        ],
        outputs=[
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["seq", "batch", spec.vocab_size]),
            helper.make_tensor_value_info("hidden_out", TensorProto.FLOAT, [spec.num_layers, "batch", spec.hidden_size]),
        ],
        initializer=init,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="gru-generate")
    proto.ir_version = IR_VERSION
    onnx.checker.check_model(proto)
    return proto


def tokenizer_path(target: str | Path) -> Path:
    """Where the tokenizer JSON of the ONNX file `target` goes: model.onnx → model.tokenizer.json."""
    target = Path(target)
    return target.with_name(target.stem + TOKENIZER_SUFFIX)


def sidecar(model: GRULanguageModel, tokenizer: Any) -> dict[str, Any]:
    """What a runtime without this toolkit needs beside the graph: the tokenizer, names for every id, the state shape."""
    return {
        "format": "gru-generate-onnx/1",
        "model_spec": model.spec.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "start_ids": list(tokenizer.start_ids()),
        "token_names": [tokenizer.token_name(i) for i in range(tokenizer.vocab_size)],
        "inputs": {"tokens": "int64 (seq, batch)", "hidden": "float32 (num_layers, batch, hidden_size), zeros to start"},
        "outputs": {"logits": "float32 (seq, batch, vocab_size)", "hidden_out": "float32, the state after the last token"},
    }


def _write_atomic(data: bytes, path: Path) -> None:
    # Same rule as checkpoints: a temporary file in the same folder, fsync, rename, so no half-written file is left.
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_onnx(model: GRULanguageModel, tokenizer: Any, target: str | Path) -> tuple[Path, Path]:
    """Write `target` (the ONNX step graph, float32 weights) and its tokenizer JSON beside it → both paths."""
    target = Path(target)
    proto = build_graph(model)
    _write_atomic(proto.SerializeToString(), target)
    meta = tokenizer_path(target)
    _write_atomic(json.dumps(sidecar(model, tokenizer), ensure_ascii=False, indent=1).encode(), meta)
    return target, meta


def export_onnx(source: str | Path, target: str | Path, overwrite: bool = False) -> tuple[Path, Path]:
    """A checkpoint (a path or a shipped model's name) → `target` (ONNX step graph) and its tokenizer JSON.

    out= follows export's rules (never the source, never a run's own file, replaced only with `overwrite`).
    """
    source, target = resolve_checkpoint(source)[0], Path(target)
    _require_onnx()  # before any work: a missing extra is the first thing to hear about
    check_export_target(source, target, overwrite, suffix=".onnx")
    check_export_target(source, tokenizer_path(target), overwrite, suffix=TOKENIZER_SUFFIX)
    ckpt = load_checkpoint(source)
    return write_onnx(build_model(ckpt), build_tokenizer(ckpt), target)
