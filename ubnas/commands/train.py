"""``ubnas train``: train an exported architecture from scratch and measure it."""
from __future__ import annotations


def add_parser(sub):
    parser = sub.add_parser(
        "train", help="train an exported architecture (arch.yaml) from scratch",
        description="Train the network of an architecture spec; writes OUT/checkpoint.pt every epoch "
                    "and OUT/metrics.json (test accuracy, parameters, MACs, latency and utilization).")
    parser.add_argument("spec", metavar="SPEC", help="architecture YAML written by the search")
    parser.add_argument("--data", default="digits", metavar="digits|cifar10|synthetic",
                        help="data set (default: digits, shipped)")
    parser.add_argument("--data-dir", metavar="DIR", help="where cifar-10-batches-py lies")
    parser.add_argument("--epochs", type=int, default=30, metavar="N", help="epochs (default 30)")
    parser.add_argument("--out", required=True, metavar="DIR", help="run directory")
    parser.add_argument("--resume", action="store_true",
                        help="continue from OUT/checkpoint.pt, its schedule options win (a new run if there is none)")
    parser.add_argument("--batch-size", type=int, default=64, metavar="N", help="default 64")
    parser.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (default 0.9)")
    parser.add_argument("--schedule", default="cosine", metavar="cosine|onecycle",
                        help="learning-rate schedule (default cosine)")
    parser.add_argument("--label-smoothing", type=float, default=0.0, metavar="EPS", help="default 0")
    parser.add_argument("--weight-decay", "--weights-decay", dest="weight_decay", type=float, default=3e-4,
                        metavar="WD", help="on conv/linear weights (default 3e-4)")
    parser.add_argument("--grad-clip", type=float, default=5.0, metavar="NORM",
                        help="gradient norm clip, 0 = off (default 5)")
    parser.add_argument("--augment", choices=("auto", "on", "off"), default="auto",
                        help="random crop + flip (auto: on for cifar10 only)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="default 0")
    parser.add_argument("--hw", metavar="PRESET|FILE.yaml",
                        help="accelerator for metrics.json (default: the one the spec was searched on, else uboost)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines (notes still print)")
    return parser


def run(args) -> int:
    from ubnas.train import TrainConfig, train
    augment = {"auto": None, "on": True, "off": False}[args.augment]
    cfg = TrainConfig(spec=args.spec, out=args.out, data=args.data, data_dir=args.data_dir,
                      epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
                      weight_decay=args.weight_decay, schedule=args.schedule,
                      label_smoothing=args.label_smoothing, grad_clip=args.grad_clip, augment=augment,
                      seed=args.seed, device=args.device, hw=args.hw)
    result = train(cfg, resume=args.resume, progress=not args.quiet)
    if args.quiet:
        m = result.metrics
        print(f"test accuracy {m['test_acc']:.4f}, latency {m['hardware']['latency_us']:.2f} us, "
              f"utilization {100 * m['hardware']['utilization']:.2f} % ({result.out_dir / 'metrics.json'})")
    return 0
