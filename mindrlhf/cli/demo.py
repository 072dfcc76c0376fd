"""``mindrlhf demo``: the whole pipeline on bundled data in a few minutes on CPU.

``--task stories`` (default, :mod:`mindrlhf.cli.demo_stories`): a proxy reward model and PPO on the bundled
pretrained TinyStories-656K, judged by a gold judge on held-out openings. ``--task cvalues``
(:mod:`mindrlhf.cli.demo_cvalues`): the seeds' three stages SFT -> reward model -> PPO on Chinese OpenAssistant and
CValues data with a tiny Llama.
"""

from __future__ import annotations

import dataclasses
import logging

logger = logging.getLogger(__name__)

TASKS = ("stories", "cvalues")


def _settings_classes():
    from mindrlhf.cli.demo_cvalues import DemoSettings
    from mindrlhf.cli.demo_stories import StoryDemoSettings

    return {"stories": StoryDemoSettings, "cvalues": DemoSettings}


def add_demo_parser(sub) -> None:
    parser = sub.add_parser("demo", help="RLHF end to end on bundled data (CPU, minutes): report, plots, TensorBoard")
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="stories",
        help="stories (default): PPO on a real pretrained model judged by a gold judge; cvalues: "
        "the three stages on Chinese data with a tiny Llama",
    )
    from mindrlhf.tools.config_doc import field_comments

    seen, what = {}, {}
    for task, cls in _settings_classes().items():
        defaults, comments = cls(), field_comments(cls)
        for f in dataclasses.fields(cls):
            if f.name == "progress":
                continue
            default = getattr(defaults, f.name)
            seen.setdefault(f.name, []).append(f"{task}: {default}")
            what.setdefault(f.name, comments.get(f.name, ""))
            if len(seen[f.name]) == 1:
                kind = type(default) if default is not None else int
                parser.add_argument(f"--{f.name}", type=kind, default=None)
    for action in parser._actions:  # help: what the flag sets, then each task's default
        name = action.dest
        if name in seen:
            action.help = f"{what[name] or name.replace('_', ' ')} (default " + ", ".join(seen[name]) + ")"
            action.help = action.help.replace("%", "%%")
    parser.add_argument("--no_progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run_demo)


def task_settings(args):
    """The chosen task's settings dataclass from the parsed flags (unset flags keep the task's defaults); a flag
    the task does not have is an error."""
    cls = _settings_classes()[args.task]
    names = {f.name for f in dataclasses.fields(cls)}
    others = {f.name for c in _settings_classes().values() for f in dataclasses.fields(c)} - names
    given = [n for n in sorted(others) if getattr(args, n, None) is not None]
    if given:
        raise SystemExit(f"error: --task {args.task} has no setting {', '.join('--' + n for n in given)}")
    values = {n: getattr(args, n) for n in names if n != "progress" and getattr(args, n, None) is not None}
    return cls(**values, progress=not args.no_progress)


def run_demo(args) -> int:
    import mindspore as ms

    settings = task_settings(args)  # a flag of the other task stops here, before the runtime is touched
    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE)
    for handler in logging.getLogger().handlers:  # the console: progress bars and the final report tell the story
        handler.setLevel(logging.WARNING)  # (each stage's info.log still gets everything)
    if args.task == "stories":
        return _print_stories(settings)
    return _print_cvalues(settings)


def _print_stories(settings) -> int:
    from mindrlhf.cli.demo_stories import run_story_demo, story_effect_table

    result = run_story_demo(settings)
    print()
    print(story_effect_table(result.table))
    print()
    print(
        f"proxy reward model, held-out accuracy against the gold judge: {result.rm_accuracy:.3f} "
        f"({result.rm_pairs} pairs)"
    )
    print(
        f"held-out gold mean: before PPO {result.gold_before:.3f}, after PPO {result.gold_after:.3f} "
        f"({result.gold_after - result.gold_before:+.3f}; initial std {result.gold_std_before:.3f}); "
        f"KL to the pretrained model {result.kl_after:.2f}"
    )
    print(f"held-out gold mean per iteration: {', '.join(f'{g:.3f}' for g in result.gold_curve)}")
    print(f"report: {result.files['report.md']}")
    return 0


def _print_cvalues(settings) -> int:
    from mindrlhf.cli.demo_cvalues import effect_table, run_demo as run

    result = run(settings)
    print()
    print(effect_table(result.table[: settings.table_rows]))
    print()
    print(f"reward model, held-out accuracy: {result.rm_accuracy:.3f} ({result.rm_pairs} pairs)")
    print(
        f"mean reward of {len(result.table)} held-out prompts: before PPO {result.reward_before:.3f}, "
        f"after PPO {result.reward_after:.3f}"
    )
    print(f"PPO reward per iteration: {', '.join(f'{r:.3f}' for r in result.ppo_reward_curve)}")
    print(f"report: {result.files['report.md']}")
    return 0
