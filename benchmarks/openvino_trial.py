"""`python -m benchmarks.openvino_trial`: ways of making the encoder's int8 model (NNCF), each against torch fp32 on
Amazon titles it was not calibrated on: minimum and mean cosine, the share of every title's ten nearest kept (among
the same titles, as `Encoder.calibrate` checks it), and speed beside OpenVINO fp32. What enrich adopted is
`enrich.backends.Int8Recipe()`; the rest is recorded in docs/experiments.md."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import numpy as np
import torch

from benchmarks.common import AMAZON, DEFAULT_CATALOG, machine, missing
from enrich.backends import CompiledModel, Int8Recipe, nncf_available, openvino_available, quantize_int8
from enrich.catalog import listing_texts, load_catalog
from enrich.embed import Encoder, mean_pooled, padded_batches
from enrich.precision import neighbours_kept
from enrich.settings import EncoderConfig

FIRST_AND_LAST_LAYERS = (r".*layer\.0\..*", r".*layer\.5\..*")
ATTENTION_OUTPUTS = (r".*attention\.output\.dense.*",)
FEED_FORWARD_OUTPUTS = (r".*layer\.\d\.output\.dense.*",)
RECIPES = {
    "300 calibration titles (NNCF's default subset)": Int8Recipe(calibration_texts=300),
    "1,000 calibration titles": Int8Recipe(calibration_texts=1000),
    "3,000 calibration titles": Int8Recipe(calibration_texts=3000),
    "1,000; first and last layers in fp32": Int8Recipe(keep_float=FIRST_AND_LAST_LAYERS),
    "1,000; attention outputs in fp32": Int8Recipe(keep_float=ATTENTION_OUTPUTS),
    "1,000; feed-forward outputs in fp32": Int8Recipe(keep_float=FEED_FORWARD_OUTPUTS),
    "1,000; 7-bit weights everywhere (overflow fix)": Int8Recipe(overflow_fix=True),
    "1,000; no SmoothQuant": Int8Recipe(smooth_quant=False),
}


def encode(compiled: CompiledModel, batches: list, count: int, dim: int) -> np.ndarray:
    out = np.zeros((count, dim), np.float32)

    def deliver(positions, hidden, inputs):
        out[positions] = mean_pooled(hidden, inputs["attention_mask"])

    compiled.run(batches, deliver)
    return out


def rate(run, count: int, repeats: int = 3) -> float:
    run()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return count / best


def with_accuracy_control(model, calibration: list, check: list, reference: np.ndarray, dim: int):
    """NNCF's quantize_with_accuracy_control, its metric the share of every title's ten nearest kept, allowed to
    drop to 0.95; quantizers are given back to fp32 until it holds, for three rounds at most (each ranks every
    remaining quantizer again: tens of minutes on 2 cores)."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    def top10_kept(compiled, items) -> float:
        items = list(items)
        positions = np.concatenate([p for p, _ in items])
        out = np.zeros((len(positions), dim), np.float32)
        for i, (_, inputs) in enumerate(items):
            rows = slice(sum(len(p) for p, _ in items[:i]), sum(len(p) for p, _ in items[: i + 1]))
            out[rows] = mean_pooled(compiled(inputs)[0], inputs["attention_mask"])
        return neighbours_kept(reference[positions], out)

    return nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(calibration), nncf.Dataset(check, lambda item: item[1]), top10_kept, max_drop=0.05,
        model_type=nncf.ModelType.TRANSFORMER, subset_size=len(calibration),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(max_num_iterations=3))


def trial(calibration_pool: list[str], check_texts: list[str], accuracy_control: bool) -> list[tuple]:
    fp32 = Encoder(EncoderConfig(precision="fp32", backend="torch"))
    reference = fp32.encode(check_texts)
    tokenizer, threads = fp32.tokenizer, torch.get_num_threads()
    model = Encoder(EncoderConfig(precision="fp32", backend="openvino")).openvino_model()

    def batches_of(texts):
        ids = tokenizer(texts, truncation=True, max_length=fp32.max_tokens)["input_ids"]
        return list(padded_batches(tokenizer, ids, fp32.config.batch_size))

    check = batches_of(check_texts)
    baseline = CompiledModel(model, "fp32", threads)
    baseline_rate = rate(lambda: encode(baseline, check, len(check_texts), fp32.dim), len(check_texts))
    rows = [("OpenVINO fp32 (for speed)", 1.0, 1.0, 1.0, baseline_rate, baseline_rate, 0.0)]
    recipes = dict(RECIPES)
    if accuracy_control:
        recipes["1,000; NNCF accuracy control, top-10 kept >= 0.95 as its metric"] = None
    for name, recipe in recipes.items():
        calibration = [inputs for _, inputs in batches_of(calibration_pool[: (recipe or Int8Recipe()).calibration_texts])]
        started = time.perf_counter()
        if recipe is None:
            quantized = with_accuracy_control(model, calibration, check, reference, fp32.dim)
        else:
            quantized = quantize_int8(model, calibration, recipe)
        seconds = time.perf_counter() - started
        compiled = CompiledModel(quantized, "int8", threads)
        vectors = encode(compiled, check, len(check_texts), fp32.dim)
        cosine = (vectors * reference).sum(1)
        int8_rate = rate(lambda: encode(compiled, check, len(check_texts), fp32.dim), len(check_texts))
        baseline_rate = rate(lambda: encode(baseline, check, len(check_texts), fp32.dim), len(check_texts))
        rows.append((name, float(cosine.min()), float(cosine.mean()), neighbours_kept(reference, vectors), int8_rate,
                     baseline_rate, seconds))
        print(row_markdown(rows[-1]), flush=True)  # as it comes: the whole trial takes a while
    return rows


def row_markdown(row: tuple) -> str:
    name, low, mean, kept, int8_rate, fp32_rate, seconds = row
    return f"| {name} | {low:.4f} | {mean:.4f} | {kept:.3f} | {int8_rate:.0f}; {fp32_rate:.0f} | {seconds:.0f} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.openvino_trial", description=__doc__.splitlines()[0])
    parser.add_argument("--texts", type=int, default=1000, help="titles checked (not calibrated on)")
    parser.add_argument("--accuracy-control", action="store_true", help="also NNCF's accuracy control (several minutes)")
    args = parser.parse_args(argv)
    if not (openvino_available() and nncf_available()):
        print("openvino_trial: needs openvino and nncf (`make setup` installs them)", file=sys.stderr)
        return 2
    if missing(DEFAULT_CATALOG, "openvino_trial"):
        return 2
    frame = load_catalog(DEFAULT_CATALOG, AMAZON, reference=True)
    shuffled = listing_texts(frame.sample(fraction=1.0, shuffle=True, seed=1))
    rows = trial(shuffled[args.texts:], shuffled[: args.texts], args.accuracy_control)
    print(f"Measured on {machine(Encoder(replace(EncoderConfig(), precision='fp32')))}, {args.texts} Amazon titles checked, "
          f"calibrated on others, with `python -m benchmarks.openvino_trial{' --accuracy-control' if args.accuracy_control else ''}`:\n")
    print("| int8 recipe | min cosine to torch fp32 | mean cosine | top-10 neighbours kept | int8 listings/s; OpenVINO fp32 "
          "beside it | quantizing, s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(row_markdown(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
