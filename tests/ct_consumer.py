"""The consumer side of the compressed-tensors export test: plain transformers + compressed-tensors.

Run as a script in its own process (never imports mxlab): for each export directory given, load it
with ``AutoModelForCausalLM.from_pretrained`` and print the logits' difference from the reference
logits saved next to it, as one JSON line.

    python tests/ct_consumer.py DIR [DIR ...]      # DIR holds ct/ (the export) and ref.pt
"""
import json
import sys

import torch
from compressed_tensors.quantization import QuantizationConfig
from transformers import AutoModelForCausalLM, CompressedTensorsConfig

torch.set_num_threads(1)


def main(dirs):
    out = {}
    for d in dirs:
        ref = torch.load(f"{d}/ref.pt")
        cfg = json.load(open(f"{d}/ct/config.json"))["quantization_config"]
        parsed = QuantizationConfig.model_validate(cfg)          # compressed-tensors' own parser
        row = {"format": parsed.format, "groups": len(parsed.config_groups), "ignore": len(parsed.ignore)}
        # 1) dequantize=True: the weights decompressed at load into a dense float32 model (no activation
        # quantization). transformers 5.24 decompresses every dense module with the first group's format,
        # so a mixed-format export fails on this route (recorded, not hidden)
        try:
            m = AutoModelForCausalLM.from_pretrained(f"{d}/ct", dtype=torch.float32,
                                                     quantization_config=CompressedTensorsConfig(dequantize=True))
            with torch.no_grad():
                row["dequantized_f32"] = (m(ref["x"]).logits - ref["weights_only"]).abs().max().item()
        except Exception as e:  # noqa: BLE001 - reported to the test
            row["dequantized_f32_error"] = f"{type(e).__name__}: {str(e).splitlines()[0]}"
        # 2) the default route (compressed modules, decompressed at load), float32. compressed-tensors
        # unpacks MXFP4/MXFP6 to bfloat16 weights, so a float32 forward first fails with a dtype error
        # (recorded); casting the model's tensors to float32 (exact) then runs it
        m = AutoModelForCausalLM.from_pretrained(f"{d}/ct", dtype=torch.float32)
        try:
            with torch.no_grad():
                m(ref["x"])
            row["default_f32_error"] = None
        except RuntimeError as e:
            row["default_f32_error"] = str(e).splitlines()[0]
        weights = {n + ".weight": mod.weight.detach().float() for n, mod in m.named_modules()
                   if getattr(mod, "quantization_scheme", None) is not None}
        torch.save(weights, f"{d}/consumer_weights.pt")   # the decompressed weights themselves
        torch.nn.Module.float(m)  # transformers refuses .float() on a quantized model; the cast is exact
        with torch.no_grad():
            row["default_f32"] = (m(ref["x"]).logits - ref["logits"]).abs().max().item()
        # 3) the default route in bfloat16, as a user would run it
        m = AutoModelForCausalLM.from_pretrained(f"{d}/ct", dtype=torch.bfloat16)
        with torch.no_grad():
            row["default_bf16"] = (m(ref["x"]).logits.float() - ref["logits"]).abs().max().item()
        row["scale"] = ref["logits"].abs().max().item()
        out[d] = row
    assert "mxlab" not in sys.modules
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1:])
