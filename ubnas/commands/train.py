"""``ubnas train``: train an exported architecture from scratch and measure it."""
from __future__ import annotations

import argparse


def add_parser(sub):
    parser = sub.add_parser(
        "train", help="train an exported architecture (arch.yaml) from scratch",
        description="Train the network of an architecture spec; writes OUT/checkpoint.pt every epoch "
                    "and OUT/metrics.json (test accuracy, parameters, MACs, latency and utilization).",
        argument_default=argparse.SUPPRESS)   # options not given stay absent: --resume names the rest
    parser.add_argument("spec", metavar="SPEC", help="architecture YAML written by the search")
    parser.add_argument("--data", metavar="digits|cifar10|synthetic",
                        help="data set (default: the one the spec was searched on, else digits)")
    parser.add_argument("--data-dir", metavar="DIR", help="where cifar-10-batches-py lies")
    parser.add_argument("--epochs", type=int, metavar="N", help="epochs (default 30)")
    parser.add_argument("--out", metavar="DIR", help="run directory (default runs/train)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.pt, its schedule options win (a new run if there is none)")
    parser.add_argument("--batch-size", type=int, metavar="N", help="default 64")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 0.05)")
    parser.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    parser.add_argument("--schedule", metavar="cosine|onecycle",
                        help="learning-rate schedule (default cosine)")
    parser.add_argument("--label-smoothing", type=float, metavar="EPS", help="default 0")
    parser.add_argument("--weight-decay", "--weights-decay", dest="weight_decay", type=float,
                        metavar="WD", help="on conv/linear weights (default 3e-4)")
    parser.add_argument("--grad-clip", type=float, metavar="NORM",
                        help="gradient norm clip, 0 = off (default 5)")
    parser.add_argument("--augment", choices=("auto", "on", "off"),
                        help="random crop (padded by 1/8 of the side: 4 px on 32x32, 1 on digits' 8x8) + "
                             "horizontal flip, as for CIFAR (auto: on for cifar10 only; a flipped digit is "
                             "another shape)")
    parser.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int, help="default 0")
    parser.add_argument("--hw", metavar="PRESET|FILE.yaml",
                        help="accelerator for metrics.json (default: the one the spec was searched on, else uboost)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines (notes still print)")
    return parser


def run(args) -> int:
    from dataclasses import fields

    from ubnas.runtime import expand_home
    from ubnas.train import AUGMENT_FLAG, METRICS, TrainConfig, summary_line, train
    given = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if hasattr(args, f.name)}
    if "augment" in given:
        given["augment"] = {flag: value for value, flag in AUGMENT_FLAG.items()}[given["augment"]]
    cfg = TrainConfig(**expand_home(given, ("spec", "out", "data_dir", "hw")))
    quiet = getattr(args, "quiet", False)
    result = train(cfg, resume=getattr(args, "resume", False), progress=not quiet, given=set(given))
    if quiet:   # the one line the run ends with
        print(summary_line(result.metrics, result.out_dir / METRICS))
    return 0
