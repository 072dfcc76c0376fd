"""``mindrlhf demo``: SFT -> reward model -> PPO on the bundled data in a few minutes on CPU (see
:mod:`mindrlhf.demo`)."""
from __future__ import annotations

import dataclasses
import logging

logger = logging.getLogger(__name__)


def add_demo_parser(sub) -> None:
    from mindrlhf.demo import DemoSettings

    parser = sub.add_parser("demo", help="the three stages on bundled data (CPU, minutes): report, plots, TensorBoard")
    defaults = DemoSettings()
    for f in dataclasses.fields(DemoSettings):
        if f.name == "progress":
            continue
        default = getattr(defaults, f.name)
        kind = type(default) if default is not None else int
        parser.add_argument(f"--{f.name}", type=kind, default=default, help=f"default: {default}")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_demo)


def run_demo(args) -> int:
    import mindspore as ms

    from mindrlhf.demo import DemoSettings, effect_table, run_demo as run

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(DemoSettings) if f.name != "progress"}
    for handler in logging.getLogger().handlers:  # the console: progress bars and the final report tell the story
        handler.setLevel(logging.WARNING)  # (each stage's info.log still gets everything)
    result = run(DemoSettings(**values, progress=not args.no_progress))
    print()
    print(effect_table(result.table[:args.table_rows]))
    print()
    print(f"reward model, held-out accuracy: {result.rm_accuracy:.3f} ({result.rm_pairs} pairs)")
    print(f"mean reward of {len(result.table)} held-out prompts: before PPO {result.reward_before:.3f}, "
          f"after PPO {result.reward_after:.3f}")
    print(f"PPO reward per iteration: {', '.join(f'{r:.3f}' for r in result.ppo_reward_curve)}")
    print(f"report: {result.files['report.md']}")
    return 0
