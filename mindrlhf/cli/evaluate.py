"""``mindrlhf eval``: is the trained policy (the candidate) better than its start (the baseline), on which questions,
by how much. Both answer a question set; a reward model or reward functions judge every answer
(:mod:`mindrlhf.evaluation`)::

    mindrlhf eval --baseline tinystories --candidate output/demo/ppo_hf --question_set mt_bench \
        --template none --reward_funcs sentiment
    mindrlhf eval --config run_llama2_tiny_ppo.yaml --baseline output/sft/checkpoint \
        --candidate output/ppo/checkpoint --reward_model output/rm/checkpoint --reward_config run_llama2_tiny_rm.yaml \
        --question_set cvalues --max_questions 64

Writes ``answers.jsonl``, ``summary.json``, ``report.md`` and ``win_rate.png`` under ``--output_dir``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import List, Optional

from mindrlhf.cli.common import build_policy, choose_tokenizer
from mindrlhf.context import add_device_argument
from mindrlhf.evaluation import EvalConfig

logger = logging.getLogger(__name__)


# the flags naming the policies and the judge (the settings' flags come from EvalConfig's fields)
FLAGS = (
    (
        "--baseline",
        dict(
            required=True,
            help="the policy compared against (its start): Hugging Face folder, bundled "
            "model name (tinystories), MindSpore .ckpt or a training output's checkpoint folder",
        ),
    ),
    ("--candidate", dict(required=True, help="the trained policy, same forms as --baseline")),
    ("--config", dict(help="run_*.yaml describing the policies' model (needed unless both are Hugging Face folders)")),
    (
        "--tokenizer",
        dict(
            help="the policies' tokenizer (default: each checkpoint folder's own, else that of the "
            "YAML's load_checkpoint or of the other policy's folder, else the family's bundled one)"
        ),
    ),
    (
        "--reward_model",
        dict(
            help="judge: a reward model (Hugging Face folder, .ckpt or a reward training's "
            "checkpoint folder); it scores each prompt + answer at the eos"
        ),
    ),
    ("--reward_config", dict(help="the reward model's run_*.yaml (needed for a .ckpt)")),
    ("--reward_tokenizer", dict(help="the reward model's tokenizer (default: its folder's own, else the baseline's)")),
    (
        "--reward_funcs",
        dict(
            nargs="+",
            metavar="NAME[=WEIGHT]",
            help="judge: reward functions of the answer text, "
            "summed with their weights: built-ins accuracy, format, length, sentiment, or "
            "module:function",
        ),
    ),
    (
        "--pairwise_judge",
        dict(
            metavar="MODULE:FUNCTION",
            help="judge: fn(questions, first_answers, second_answers) "
            "-> preferences in [-1, 1] (positive: first better), asked in both orders",
        ),
    ),
)


PAIRS = (("baseline", "candidate"), ("candidate", "baseline"))


def add_eval_parser(sub) -> None:
    parser = sub.add_parser(
        "eval",
        help="judge a trained policy against its start on a question set: win / tie / "
        "loss with an interval, scores, lengths, per category",
    )
    for flag, options in FLAGS:
        parser.add_argument(flag, **options)
    defaults = EvalConfig()
    for f in dataclasses.fields(EvalConfig):
        default = getattr(defaults, f.name)
        if isinstance(default, bool):
            parser.add_argument(f"--{f.name}", action="store_true", help=f"default {default}")
        else:
            parser.add_argument(f"--{f.name}", type=type(default), default=default, help=f"default {default}")
    parser.add_argument("--output_dir", default="output/eval", help="folder of the report and answers")
    add_device_argument(parser)
    parser.set_defaults(func=run_eval)


def parse_reward_funcs(names: List[str]):
    """``name`` or ``name=weight`` entries -> :class:`mindrlhf.rewards.RewardFuncSpec`."""
    from mindrlhf.rewards import RewardFuncSpec

    specs = []
    for entry in names:
        name, _, weight = entry.partition("=")
        try:
            specs.append(RewardFuncSpec(name, float(weight) if weight else 1.0))
        except ValueError as err:
            raise ValueError(f"--reward_funcs {entry}: {err}") from None
    return specs


def load_policy(name: str, checkpoint: str, run_cfg, tokenizer_path: Optional[str], has_config: bool, other: str):
    """A :class:`mindrlhf.evaluation.Policy` from a checkpoint, with its tokenizer (checked against the model):
    ``tokenizer_path``, else the first that ships one of the checkpoint's folder, the YAML's ``load_checkpoint``
    and the ``other`` policy's folder (a PPO ``.ckpt`` next to its Hugging Face start), else the family's bundled
    one."""
    from mindrlhf.data.tokenizer import check_tokenizer_fits
    from mindrlhf.evaluation import Policy
    from mindrlhf.models.convert import is_hf_folder, resolve_checkpoint
    from mindrlhf.train.ppo import weights_file

    path = weights_file(resolve_checkpoint(checkpoint))
    if not os.path.exists(path):
        raise ValueError(
            f"--{name} {checkpoint}: not found (a Hugging Face folder, a bundled model name, a .ckpt "
            f"or a training output's checkpoint folder)"
        )
    if not has_config and not is_hf_folder(path):
        raise ValueError(f"--{name} {checkpoint}: not a Hugging Face folder, so --config must describe its model")
    lm = build_policy(run_cfg, path)
    tokenizer, _ = choose_tokenizer(tokenizer_path, (path, run_cfg.load_checkpoint, other), lm.config.type)
    check_tokenizer_fits(tokenizer, lm.config, f"--{name} {checkpoint}")
    return Policy(name, checkpoint, lm, tokenizer)


def pairwise_judge(name: str):
    """A :class:`mindrlhf.evaluation.PairwiseJudge` of a ``module:function`` (resolved and its signature checked
    as a reward function's is)."""
    from mindrlhf.evaluation import PairwiseJudge
    from mindrlhf.rewards import RewardFuncSpec, load_reward_funcs

    if ":" not in name:
        raise ValueError(f"--pairwise_judge {name}: expected module:function")
    try:
        ((_, _, fn),) = load_reward_funcs([RewardFuncSpec(name)])
    except ValueError as err:
        raise ValueError(f"--pairwise_judge: {err}") from None
    return PairwiseJudge(fn, f"pairwise judge {name} (both orders)")


def build_judge(args, baseline, reward_specs):
    """A :class:`FunctionJudge` of the reward functions, or a :class:`RewardModelJudge` whose vocabulary is
    checked against the baseline before its weights are read."""
    from mindrlhf.config import load_config
    from mindrlhf.data.tokenizer import check_tokenizer_fits
    from mindrlhf.evaluation import FunctionJudge, RewardModelJudge
    from mindrlhf.models import RewardModel
    from mindrlhf.models.convert import is_hf_folder, load_weights, model_config_from_hf_folder, resolve_checkpoint
    from mindrlhf.rewards import CombinedReward, load_reward_funcs
    from mindrlhf.train.ppo import weights_file

    if reward_specs:
        names = ", ".join(f"{s.name} x {s.weight:g}" for s in reward_specs)
        return FunctionJudge(
            CombinedReward(load_reward_funcs(reward_specs), baseline.tokenizer), f"reward functions: {names}"
        )
    path = weights_file(resolve_checkpoint(args.reward_model))
    if not os.path.exists(path):
        raise ValueError(f"--reward_model {args.reward_model}: not found")
    if is_hf_folder(path):
        model_cfg = model_config_from_hf_folder(path)
    elif args.reward_config:
        model_cfg = load_config(args.reward_config).model.model_config
    else:
        raise ValueError(
            f"--reward_model {args.reward_model}: not a Hugging Face folder, so --reward_config must describe its model"
        )
    tokenizer, _ = choose_tokenizer(args.reward_tokenizer, (path, baseline.checkpoint), model_cfg.type)
    check_tokenizer_fits(tokenizer, model_cfg, f"--reward_model {args.reward_model}")
    judge = RewardModelJudge(RewardModel(model_cfg), tokenizer, f"reward model {args.reward_model}")
    judge.check_vocabulary(baseline)
    load_weights(judge.model, path, model_cfg)
    judge.model.set_train(False)
    return judge


def describe(policy) -> str:
    cfg = policy.lm.config
    return (
        f"`{policy.checkpoint or 'fresh weights'}` ({cfg.type}, {cfg.num_layers} layers x {cfg.hidden_size}, "
        f"vocab {cfg.vocab_size}; tokenizer `{policy.tokenizer.path}`)"
    )


def prepare(args):
    """``(EvalConfig, questions, baseline, candidate, judge)``; every bad input is a ``ValueError`` / ``OSError``
    raised here, the cheap checks (settings, question set, judge choice, reward functions) first."""
    from mindrlhf.config import load_config
    from mindrlhf.context import apply_device_target, init_context
    from mindrlhf.evaluation import load_question_set

    cfg = EvalConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(EvalConfig)})
    questions = load_question_set(cfg.question_set, cfg.max_questions)
    if sum(bool(j) for j in (args.reward_model, args.reward_funcs, args.pairwise_judge)) != 1:
        raise ValueError(
            "give one judge: --reward_model PATH, --reward_funcs NAME ... or --pairwise_judge MODULE:FUNCTION"
        )
    specs = parse_reward_funcs(args.reward_funcs) if args.reward_funcs else None
    if specs:
        from mindrlhf.rewards import load_reward_funcs

        load_reward_funcs(specs)  # unknown names and bad options fail before any model is built
    pairwise = pairwise_judge(args.pairwise_judge) if args.pairwise_judge else None
    run_cfg = load_config(args.config)
    apply_device_target(run_cfg.context, args.device_target)
    init_context(run_cfg.context, run_cfg.seed)
    baseline, candidate = (
        load_policy(name, getattr(args, name), run_cfg, args.tokenizer, bool(args.config), getattr(args, other))
        for name, other in PAIRS
    )
    return cfg, questions, baseline, candidate, pairwise or build_judge(args, baseline, specs)


def run_eval(args) -> int:
    from mindrlhf.evaluation import evaluate, write_evaluation

    try:
        cfg, questions, baseline, candidate, judge = prepare(args)
        result = evaluate(baseline, candidate, judge, questions, cfg)
    except (ValueError, OSError) as err:  # settings, question set, checkpoints, tokenizers, judge
        raise SystemExit(f"error: {err}") from None
    turns = sum(len(q.turns) for q in questions)
    header = {
        "baseline": describe(baseline),
        "candidate": describe(candidate),
        "judge": judge.name,
        "question set": f"`{cfg.question_set}`: {len(questions)} questions, {turns} turns",
    }
    files = write_evaluation(result, header, cfg, args.output_dir)
    overall = result.summary["overall"]
    print(
        f"candidate vs baseline: win rate {overall['win_rate']:.3f} [{overall['ci_low']:.3f}, "
        f"{overall['ci_high']:.3f}] ({overall['wins']} wins, {overall['ties']} ties, {overall['losses']} losses "
        f"on {overall['questions']} questions); report {files['report.md']}"
    )
    return 0
