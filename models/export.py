"""Export a torchvision classifier to ONNX, with its class names in the metadata.

    python models/export.py resnet50 -o resnet50.onnx                 # pretrained (needs internet)
    python models/export.py resnet50 -o resnet50.onnx --weights none  # random weights, fixed seed
    python models/export.py resnet50 -o r50_bn.onnx --keep-bn          # BatchNormalization kept
    python models/export.py resnet50 -o r50_dyn.onnx --dynamo          # torch.export-based exporter

Three export flavours, because each produces a different graph from the same model:
  default    legacy TorchScript exporter, opset 17, constant folding on (BN folded into Conv)
  --keep-bn  legacy exporter, TrainingMode.PRESERVE and no constant folding (BN nodes kept)
  --dynamo   torch.export-based exporter, opset 18+

The batch dimension is dynamic, so one file runs at any batch size.
Class names go into metadata_props["labels"] as a JSON list; `rzrt run` prints them.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

LABELS_KEY = "labels"
IMAGENET_LABELS = Path(__file__).resolve().parent.parent / "rzrt" / "data" / "imagenet_classes.txt"


def _input_size(name: str) -> int:
    return 299 if name.startswith("inception") else 224


def randomize_batchnorm(model, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics, so folding BN is a real test.

    Freshly initialised BN layers have mean 0, var 1, weight 1, bias 0, an identity in
    disguise; a runtime that ignored BN entirely would still match torch on them.
    """
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
            c = m.num_features
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)
                    m.bias.copy_(torch.randn(c, generator=g) * 0.1)


def build_model(name: str, weights: str = "none", seed: int = 0):
    """(model in eval mode, class names or None). weights: 'DEFAULT', 'none' or a weights enum name."""
    import torch
    import torchvision

    if weights.lower() == "none":
        torch.manual_seed(seed)
        model = torchvision.models.get_model(name, weights=None)
        randomize_batchnorm(model, seed)
        labels = None
    else:
        w = torchvision.models.get_model_weights(name)
        w = w.DEFAULT if weights.upper() == "DEFAULT" else w[weights]
        try:
            model = torchvision.models.get_model(name, weights=w)
        except Exception as e:  # urllib / ssl / socket errors all land here
            raise SystemExit(
                f"export: could not download the {name} weights ({type(e).__name__}: {e}); "
                "offline? use --weights none for random weights (fixed seed)")
        labels = list(w.meta.get("categories") or []) or None
    model.eval()
    return model, labels


def export(name: str, out: str | os.PathLike, *, weights: str = "none", keep_bn: bool = False,
           opset: int | None = None, dynamo: bool = False, seed: int = 0, batch: int = 1) -> Path:
    """Export torchvision model `name` to `out`; returns the path written."""
    import onnx
    import torch

    model, labels = build_model(name, weights, seed)
    size = _input_size(name)
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if dynamo:
        # torch.export specialises sizes 0 and 1, so trace with a batch of 2 and let it find the dynamic dim
        x2 = torch.cat([x, x]) if batch == 1 else x
        prog = torch.onnx.export(model, (x2,), dynamo=True, opset_version=opset or 18,
                                 input_names=["input"], output_names=["logits"],
                                 dynamic_shapes=({0: torch.export.Dim.AUTO},), external_data=False)
        proto = prog.model_proto
        _name_batch_dim(proto)
    else:
        import io
        import warnings
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # "legacy exporter": we know
        buf = io.BytesIO()
        kwargs = dict(training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False) if keep_bn else {}
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=opset or 17,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, **kwargs)
        proto = onnx.load_from_string(buf.getvalue())
    if labels is None and _num_classes(model) == 1000:
        labels = IMAGENET_LABELS.read_text().splitlines()
    if labels:
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, {LABELS_KEY: json.dumps(labels)})
    proto.doc_string = f"torchvision {name}, weights={weights}" + (", BN kept" if keep_bn else "")
    onnx.save(proto, str(out))
    return out


def _name_batch_dim(proto) -> None:
    """torch.export names the dynamic batch dim s77 or similar; call it "batch", as the legacy exporter does."""
    dim = proto.graph.input[0].type.tensor_type.shape.dim[0]
    old = dim.dim_param
    if not old or old == "batch":
        return
    for vi in list(proto.graph.input) + list(proto.graph.output) + list(proto.graph.value_info):
        for d in vi.type.tensor_type.shape.dim:
            if d.dim_param == old:
                d.dim_param = "batch"


def _num_classes(model) -> int | None:
    import torch

    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return last[-1].out_features if last else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", help="torchvision classifier name, e.g. resnet50, mobilenet_v2, vit_b_16")
    p.add_argument("-o", "--output", help="output .onnx (default: MODEL.onnx)")
    p.add_argument("--weights", default="DEFAULT",
                   help="DEFAULT (pretrained, downloads), none (random, fixed seed) or a weights name")
    p.add_argument("--keep-bn", action="store_true", help="keep BatchNormalization nodes (no folding)")
    p.add_argument("--opset", type=int, help="ONNX opset (default 17, or 18 with --dynamo)")
    p.add_argument("--dynamo", action="store_true", help="use the torch.export-based exporter")
    p.add_argument("--seed", type=int, default=0, help="seed for random weights and the example input")
    args = p.parse_args(argv)
    try:
        import torchvision

        if args.model not in torchvision.models.list_models(torchvision.models):
            raise SystemExit(f"export: unknown model {args.model!r}; expected a torchvision classifier "
                             f"such as resnet50 (see torchvision.models.list_models())")
    except ImportError:
        raise SystemExit("export: torch and torchvision are needed; pip install -e '.[export]'")
    out = export(args.model, args.output or f"{args.model}.onnx", weights=args.weights,
                 keep_bn=args.keep_bn, opset=args.opset, dynamo=args.dynamo, seed=args.seed)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
