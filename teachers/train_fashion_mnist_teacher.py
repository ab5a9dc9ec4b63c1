"""Train the default recipe's frozen teacher once and ship it as safetensors.

This is how ``teachers/weights/fashion_mnist_convnet.safetensors`` was made (the numbers it
reached are written into ``teachers/fashion_mnist_convnet.yaml``):

    python teachers/train_fashion_mnist_teacher.py --epochs 6 --seed 0

It trains the residual ``convnet`` (widths 32/64/256, two blocks per stage, 0.81M parameters,
55M MACs) on all 60,000 Fashion-MNIST training images with random flips and 2-pixel shifts,
SGD + one-cycle LR. Deterministic on CPU for a given seed and thread count.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml
from safetensors.torch import save_file

from edgedistill.data import FASHION_MNIST_LABELS, Normalization, load_idx_dataset
from edgedistill.students.vision import ConvNet

HERE = Path(__file__).resolve().parent
ARCH = {
    "in_channels": 1,
    "num_classes": 10,
    "widths": [32, 64, 256],
    "blocks_per_stage": 2,
    "residual": True,
    "dropout": 0.1,
}


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random shift of up to 2 pixels (zero padded)."""
    flip = torch.rand(x.shape[0], generator=gen) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    padded = F.pad(x, (2, 2, 2, 2), value=float(x.min()))
    dx, dy = (int(v) for v in torch.randint(0, 5, (2,), generator=gen))
    return padded[..., dy : dy + x.shape[-2], dx : dx + x.shape[-1]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--out", type=Path, default=HERE / "weights" / "fashion_mnist_convnet.safetensors"
    )
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    torch.use_deterministic_algorithms(True)
    ds = load_idx_dataset(args.data, FASHION_MNIST_LABELS, "fashion-mnist")
    norm = Normalization.from_images(ds.x_train)
    x_train, y_train = norm.apply(ds.x_train), torch.as_tensor(ds.y_train)
    x_test, y_test = norm.apply(ds.x_test), torch.as_tensor(ds.y_test)
    model = ConvNet(**ARCH)  # type: ignore[arg-type]
    batch = 128
    steps = args.epochs * ((len(y_train) + batch - 1) // batch)
    opt = torch.optim.SGD(
        model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4
    )
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=steps, pct_start=0.2)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(y_train), generator=gen)
        for i in range(0, len(order), batch):
            idx = order[i : i + batch]
            loss = F.cross_entropy(model(augment(x_train[idx], gen)), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.inference_mode():
            pred = torch.cat(
                [model(x_test[i : i + 1000]).argmax(1) for i in range(0, len(y_test), 1000)]
            )
        acc = float((pred == y_test).float().mean()) * 100
        print(
            f"epoch {epoch + 1}/{args.epochs} loss {loss.item():.4f} test top-1 {acc:.2f}% "
            f"({time.time() - start:.0f}s)",
            flush=True,
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(args.out), metadata={"arch": "convnet", "config": json.dumps(ARCH)})
    sha = hashlib.sha256(args.out.read_bytes()).hexdigest()
    card = {
        "name": "fashion-mnist-convnet",
        "description": "Residual ConvNet trained once on all 60k Fashion-MNIST training images "
        "by teachers/train_fashion_mnist_teacher.py; frozen teacher of the default recipe.",
        "arch": "convnet",
        "config": ARCH,
        "weights": f"weights/{args.out.name}",
        "sha256": sha,
        "input": {"shape": [1, 28, 28], "dtype": "float32", "normalization": norm.as_dict()},
        "labels": list(FASHION_MNIST_LABELS),
        "trained": {
            "epochs": args.epochs,
            "seed": args.seed,
            "test_top1": round(acc, 2),
            "seconds": round(time.time() - start),
            "command": f"python teachers/train_fashion_mnist_teacher.py --epochs {args.epochs} --seed {args.seed}",
        },
        "taps": ["stages.0", "stages.1", "stages.2"],
    }
    (HERE / "fashion_mnist_convnet.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    print(json.dumps({"test_top1": acc, "sha256": sha}))


if __name__ == "__main__":
    main()
