"""Choose the SmolLM2 sentiment prompt on training reviews (never the test films).

Scores each candidate template's zero-shot verbaliser accuracy (" negative" / " positive")
on a seeded sample of the *training* split of ``rotten-tomatoes`` (movie-disjoint from the
test split), and prints the table; the best one goes into teachers/smollm2_sentiment.yaml.

    python benchmarks/llm_prompt_choice.py [--samples 300]

Writes benchmarks/results/llm_prompt_choice.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from edgedistill.report.benchmarks import write_results
from edgedistill.students.text import ByteTokenizer
from edgedistill.tasks.sources import build_task, parse_data_section
from edgedistill.teachers.text import CausalLMTeacher, llm_teacher_smollm2

ROOT = Path(__file__).resolve().parents[1]
TEMPLATES = {
    "question": "Movie review: {text}\nIs this review positive or negative? Answer:",
    "sentiment": "Review: {text}\nSentiment:",
    "label": "Movie review: {text}\nThe sentiment of this review is",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=300)
    args = parser.parse_args()
    section = parse_data_section({"source": "rotten-tomatoes"}, base_dir=None, source="bench")
    task = build_task(section, cache_dir=ROOT / "runs" / "cache", seed=0)
    pick = np.sort(np.random.default_rng(0).permutation(len(task.y_train))[: args.samples])
    decode = ByteTokenizer().decode
    texts = [decode(row) for row in task.x_train[pick]]
    labels = task.y_train[pick]
    base = llm_teacher_smollm2(template="{text}", verbalisers=[" negative", " positive"])
    rows = []
    for name, template in TEMPLATES.items():
        teacher = CausalLMTeacher(
            base.model, base.tokenizer, name, base.weights_sha256, template=template,
            verbalisers=(" negative", " positive"), max_length=160,
        )  # fmt: skip
        started = time.perf_counter()
        with torch.inference_mode():
            scores = np.concatenate(
                [teacher(texts[i : i + 16]).numpy() for i in range(0, len(texts), 16)]
            )
        predicted = scores.argmax(1)
        row = {
            "template": name,
            "text": template,
            "accuracy": round(100 * float((predicted == labels).mean()), 2),
            "share_positive": round(100 * float(predicted.mean()), 1),
            "seconds": round(time.perf_counter() - started, 1),
        }
        rows.append(row)
        print(row, flush=True)
    write_results(ROOT / "benchmarks" / "results" / "llm_prompt_choice.json", rows,
                  samples=args.samples, split="train (movie-disjoint from test)")  # fmt: skip


if __name__ == "__main__":
    main()
