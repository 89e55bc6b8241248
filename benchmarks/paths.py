"""`python -m benchmarks.paths` (and part of `make bench`): the encoder on every path this machine has (torch and
OpenVINO; fp32, bf16, int8 calibrated on the reference as `enrich index` does), timed on the held-out titles beside
sentence-transformers in the same run, each with its agreement with torch fp32; and the catalog's quality figures
with the chosen paths against torch fp32 (one more evaluation, every model on torch fp32)."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import AMAZON, DEFAULT_CATALOG, cpu, machine, missing
from benchmarks.docs import publish, update_section
from enrich.backends import cpu_runs_bf16, nncf_available, openvino_available
from enrich.catalog import listing_texts, load_catalog
from enrich.category.tagger import Tagger
from enrich.embed import PATHS, Encoder, packaged_model_path
from enrich.evaluation.evaluate import evaluate, split_catalog
from enrich.index.build import calibration_texts
from enrich.precision import neighbours_kept
from enrich.settings import EncoderConfig, EnrichConfig, EvalConfig

QUALITY = ("category accuracy, full path", "same-leaf precision@10", "prior Spearman")
QUALITY_TOLERANCE = 0.005  # the chosen paths' figures must be within this of torch fp32's


def available_paths() -> tuple[list[str], dict[str, str]]:
    """The encoder's paths on this machine, and why each other one is left out."""
    missing = {}
    if not openvino_available():
        missing |= {path: "OpenVINO is not installed" for path in PATHS if path.startswith("openvino")}
    else:
        if not cpu_runs_bf16():
            missing["openvino bf16"] = "OpenVINO has no bf16 kernels for this CPU (it would run fp32)"
        if not nncf_available():
            missing["openvino int8"] = "NNCF is not installed"
    return [path for path in PATHS if path not in missing], missing


def _timed(run) -> tuple[object, float]:
    started = time.perf_counter()
    out = run()
    return out, time.perf_counter() - started


def encoder_paths(texts: list[str], calibration: list[str], chosen: Encoder, repeats: int = 3) -> dict:
    """Every path and sentence-transformers on `texts`: a first pass each (it builds the kernels), then `repeats`
    rounds in turn, the best kept (a path at under half the fastest one's rate is not run again)."""
    from sentence_transformers import SentenceTransformer

    paths, missing = available_paths()
    encoders = {path: Encoder(EncoderConfig(backend=path.split()[0], precision=path.split()[1]),
                              calibration=calibration if path.endswith("int8") else None) for path in paths}
    baseline = SentenceTransformer(packaged_model_path(), device="cpu")
    runs = {"sentence-transformers": lambda: baseline.encode(texts, batch_size=32, normalize_embeddings=True)}
    runs |= {path: (lambda encoder=encoder: encoder.encode(texts)) for path, encoder in encoders.items()}
    outputs, seconds, first = {}, {}, {}
    for name, run in runs.items():
        outputs[name], first[name] = _timed(run)
        seconds[name] = [first[name]]
    for _ in range(repeats):
        fastest = min(min(s) for s in seconds.values())
        for name, run in runs.items():
            if min(seconds[name]) <= 2 * fastest:
                seconds[name].append(_timed(run)[1])
    best = {name: min(s) for name, s in seconds.items()}
    reference, st = outputs["torch fp32"], best["sentence-transformers"]
    rows = {path: {"per_s": len(texts) / best[path], "against_sentence_transformers": st / best[path],
                   "against_torch_fp32": best["torch fp32"] / best[path],
                   "min_cosine": float((outputs[path] * reference).sum(1).min()),
                   "top10_kept": neighbours_kept(reference, outputs[path])} for path in paths}
    expected = outputs["sentence-transformers"]
    return {"texts": len(texts), "cpu": cpu(), "chosen": chosen.path, "choice": asdict(chosen.precision),
            "int8_note": chosen.int8_note, "paths": rows, "left_out": missing,
            "sentence_transformers_per_s": len(texts) / st,
            "first_pass_against_sentence_transformers": first["sentence-transformers"] / first[chosen.path],
            "chosen_against_sentence_transformers": {"min_cosine": float((expected * outputs[chosen.path]).sum(1).min()),
                                                     "top10_kept": neighbours_kept(expected, outputs[chosen.path])}}


def quality_figures(metrics: dict) -> dict[str, float]:
    return dict(zip(QUALITY, (metrics["tags"]["enrich"]["full path"]["accuracy"], metrics["neighbors"]["precision@10"]["enrich"],
                              metrics["priors"]["ranking"]["enrich"]["spearman"])))


def quality_against_torch_fp32(catalog: Path, seed: int, chosen_metrics: dict, tagger: Tagger | None) -> dict:
    """The evaluation again with the encoder and the tagger on torch fp32: the chosen paths' quality beside it."""
    exact_tagger = Tagger.load(tagger.folder, precision="fp32", backend="torch") if tagger is not None else None
    exact = evaluate(catalog, AMAZON, EvalConfig(seed=seed), progress=False,
                     encoder=Encoder(EncoderConfig(precision="fp32", backend="torch")), tagger=exact_tagger)
    return {"tagger": tagger.precision.chosen if tagger is not None else None,
            "chosen": quality_figures(chosen_metrics), "torch fp32": quality_figures(exact.metrics)}


def markdown_rows(encoder: dict, quality: dict | None) -> list[str]:
    """The catalog table's rows for the encoder's paths and the chosen paths' quality."""
    lines = []
    for path, row in encoder["paths"].items():
        name = f"**{path}** (chosen)" if path == encoder["chosen"] else path
        lines.append(f"| encoder on {name}, {encoder['texts']} held-out texts: listings/s, against sentence-transformers; "
                     f"against torch fp32 | {row['per_s']:.0f}/s, **{row['against_sentence_transformers']:.2f}x**; "
                     f"{row['against_torch_fp32']:.2f}x | min cosine to torch fp32 {row['min_cosine']:.4f}, top-10 kept "
                     f"{row['top10_kept']:.3f} | >= 2x on AVX2, >= 3x on AVX-512; never below torch fp32 |")
    for path, why in encoder["left_out"].items():
        lines.append(f"| encoder on {path} | not measured: {why} | | |")
    choice = encoder["choice"]
    figures = "; ".join(f"{path} {figure}" for path, figure in choice.get("figures", {}).items())
    lines.append(f"| &nbsp;&nbsp;the choice at first use ({choice['reason']}; 256-title workload, listings/s) | "
                 f"{', '.join(f'{k} {v:.0f}' + ('' if choice['agrees'].get(k, True) else ' (disagrees)') for k, v in choice['per_s'].items())}"
                 f" | {figures or encoder['int8_note'] or ''} | |")
    lines.append(f"| sentence-transformers encode (fp32), the same texts | {encoder['sentence_transformers_per_s']:.0f}/s | "
                 f"chosen path's first pass {encoder['first_pass_against_sentence_transformers']:.2f}x | |")
    if quality:
        chosen, exact = quality["chosen"], quality["torch fp32"]
        worst = max(abs(chosen[k] - exact[k]) for k in QUALITY)
        lines.append(f"| quality with the chosen paths (encoder {encoder['chosen']}, tagger {quality['tagger'] or 'none'}) "
                     f"against both on torch fp32: {'; '.join(QUALITY)} | {'; '.join(f'{chosen[k]:.3f}' for k in QUALITY)} | "
                     f"{'; '.join(f'{exact[k]:.3f}' for k in QUALITY)} (largest difference {worst:.4f}) | within {QUALITY_TOLERANCE} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.paths", description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=Path, default=DEFAULT_CATALOG)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("out"))
    parser.add_argument("--model", type=Path, help="a tagger trained on this split's reference part (as make bench does)")
    parser.add_argument("--no-quality", action="store_true", help="speed and agreement only (no evaluations)")
    parser.add_argument("--no-docs", action="store_true")
    args = parser.parse_args(argv)
    if missing(args.catalog, "paths"):
        return 2
    encoder = Encoder()
    reference, held_out = split_catalog(load_catalog(args.catalog, AMAZON, reference=True), EvalConfig(seed=args.seed))
    tagger = Tagger.load(args.model) if args.model else None
    quality = None
    if not args.no_quality:
        evaluation = evaluate(args.catalog, AMAZON, EvalConfig(seed=args.seed), progress=False, encoder=encoder, tagger=tagger)
        quality = quality_against_torch_fp32(args.catalog, args.seed, evaluation.metrics, tagger)
    calibration = calibration_texts(reference, EnrichConfig().prior.seed)  # as the evaluation's index build drew them
    encoder.calibrate(calibration)
    results = {"machine": machine(encoder), "encoder": encoder_paths(listing_texts(held_out), calibration, encoder),
               "quality": quality}
    table = "\n".join(["| measure | enrich | beside it | bar |", "|---|---|---|---|",
                       *markdown_rows(results["encoder"], quality)])
    print(f"\nmachine: {results['machine']}\n")
    publish(args.out, "paths", results, table)
    if not args.no_docs:
        update_section("paths", table, "python -m benchmarks.paths" + (" --no-quality" if args.no_quality else ""),
                       results["machine"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
