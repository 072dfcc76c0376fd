"""``mindrlhf demo`` (the default task, ``--task stories``): RLHF that measurably aligns a real pretrained model on
one CPU in a few minutes. The bundled TinyStories-656K (a Llama with grouped-query attention that writes short
English stories) learns to write happier stories, and a gold judge it never sees says by how much:

1. story openings sampled from the pretrained model, split into train and held-out (:mod:`mindrlhf.alignment`);
2. two continuations per train opening, labelled by the gold judge (VADER sentiment): chosen = the happier one;
3. stage 2: a proxy reward model (the pretrained backbone + a new score head) trained on those pairs, its accuracy
   measured on held-out pairs;
4. stage 3: PPO against the proxy; after every iteration the held-out openings are sampled and judged by the gold
   judge, so the report shows what PPO really gained, not only what the proxy believes.

Everything lands under one folder::

    output/demo/
      data/          openings, gold-labelled pairs and prompts as MindRecords
      rm/ ppo/       each stage's checkpoints, info.log, TensorBoard events, resolved config (ppo/ppo_metrics.jsonl)
      rm_loss.png gold_reward.png proxy_reward.png ppo_kl.png
      report.md      held-out gold mean before / after, the proxy's accuracy, a before / after table of stories
      summary.json   the same numbers
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List

from mindrlhf.alignment import (
    HeldOutJudge,
    PolicyEvaluation,
    StoryProtocol,
    pair_seq_length,
    pairwise_accuracy,
    prepare_story_data,
)

logger = logging.getLogger(__name__)


@dataclass
class StoryDemoSettings:
    """Sizes of the story demo (the defaults take a few minutes on 2 CPU cores)."""

    output_dir: str = "output/demo"  # folder of the report, plots, TensorBoard events and each stage's outputs
    train_prompts: int = 256  # openings whose gold-labelled pairs train the proxy and whose rollouts train PPO
    eval_prompts: int = 16  # held-out openings judged before, during and after PPO
    eval_samples: int = 4  # samples per held-out opening
    new_tokens: int = 48  # tokens generated per continuation
    rm_epochs: int = 4  # passes over the proxy reward model's gold-labelled pairs
    ppo_iterations: int = 20  # PPO iterations (each: rollouts, then updates, then the held-out gold judging)
    ppo_rollouts: int = 64  # rollouts per PPO iteration
    table_rows: int = 4  # rows of the before / after table
    seed: int = 0  # seed of every stage (openings, initial weights, sampling)
    progress: bool = True


@dataclass
class StoryDemoResult:
    """What the story demo measured (also written to summary.json)."""

    rm_accuracy: float  # held-out pairwise accuracy of the proxy against the gold labels
    rm_pairs: int
    gold_before: float  # held-out gold mean, pretrained policy
    gold_after: float  # the same openings and sampling seeds, PPO policy
    gold_std_before: float
    proxy_before: float
    proxy_after: float
    kl_after: float  # KL(policy || pretrained) per held-out sample after PPO
    gold_outcome: Dict[str, float] = field(default_factory=dict)  # after vs before, sample by sample (mindrlhf eval)
    gold_curve: List[float] = field(default_factory=list)  # held-out gold mean after each iteration
    proxy_curve: List[float] = field(default_factory=list)  # PPO rollout proxy score per iteration
    kl_curve: List[float] = field(default_factory=list)  # PPO rollout KL per iteration
    table: List[Dict[str, object]] = field(default_factory=list)
    seconds: Dict[str, float] = field(default_factory=dict)
    files: Dict[str, str] = field(default_factory=dict)


def _recipes(settings: StoryDemoSettings, folder: str):
    """(reward-model RunConfig, PPO RunConfig) of the bundled story recipes with the demo's sizes."""
    import mindspore as ms

    from mindrlhf.config import load_config
    from mindrlhf.cli.demo_cvalues import recipe
    from mindrlhf.models.convert import BUNDLED_MODELS

    ms.set_seed(settings.seed)
    common = [
        f"seed={settings.seed}",
        "checkpoint.log_interval=1000000",
        "checkpoint.save_checkpoint_steps=1000000",
        "checkpoint.keep_checkpoint_max=1",
    ]
    rm = load_config(
        recipe("run_tinystories_656k_rm.yaml"),
        common
        + [
            f"output_dir={folder}/rm",
            f"load_checkpoint={BUNDLED_MODELS['tinystories']}",
            f"runner_config.epochs={settings.rm_epochs}",
        ],
    )
    rollouts = settings.ppo_rollouts
    ppo = load_config(
        recipe("run_tinystories_656k_ppo.yaml"),
        common
        + [
            f"output_dir={folder}/ppo",
            f"ppo.epochs={settings.ppo_iterations}",
            f"ppo.num_rollouts={rollouts}",
            f"ppo.chunk_size={rollouts}",
            f"ppo.batch_size={max(rollouts // 4, 1)}",
            f"ppo.generation.max_new_tokens={settings.new_tokens}",
        ],
    )
    return rm, ppo


def train_proxy(settings: StoryDemoSettings, rm_cfg, data, protocol: StoryProtocol):
    """Stage 2 on the gold-labelled pairs; returns (reward checkpoint, losses, held-out accuracy)."""
    from mindrlhf.train.reward import train_reward_model

    model, fit = train_reward_model(rm_cfg, data.files["pairs"], progress=settings.progress and "stage 2 proxy RM")
    model.set_train(False)
    accuracy = pairwise_accuracy(
        model, data.eval_pairs, pair_seq_length(protocol), rm_cfg.model.model_config.pad_token_id
    )
    return fit.last_checkpoint, fit.losses, accuracy


def run_ppo_with_gold(
    settings: StoryDemoSettings, ppo_cfg, rm_cfg, data, reward_checkpoint: str, tokenizer, protocol: StoryProtocol
):
    """Stage 3, judging the held-out openings with the gold judge after every iteration. Returns the trainer,
    the evaluations (index 0: before PPO) and the per-iteration PPO metrics."""
    from tqdm import tqdm

    from mindrlhf.models.convert import BUNDLED_MODELS
    from mindrlhf.train.ppo import PPOTrainer, build_ppo_models, prompt_source, weights_file

    width, prompts = prompt_source(data.files["prompts"], ppo_cfg, 0, 1)
    models = build_ppo_models(
        ppo_cfg.model.model_config,
        ppo_cfg.ppo,
        rm_cfg.model.model_config,
        sft_checkpoint=BUNDLED_MODELS["tinystories"],
        reward_checkpoint=weights_file(reward_checkpoint),
        seed=settings.seed,
    )
    trainer = PPOTrainer(ppo_cfg, models, width, prompts)
    judge = HeldOutJudge(models.ref, models.reward, ppo_cfg.model.model_config, tokenizer, data.eval_prompts, protocol)
    evaluations, results = [judge(models.ref)], []
    bar = tqdm(range(ppo_cfg.ppo.epochs), desc="stage 3 PPO", unit="iter", disable=not settings.progress)
    try:
        for iteration in bar:
            results.append(trainer.run_iteration(iteration))
            evaluations.append(judge(models.policy))
            bar.set_postfix(gold=f"{evaluations[-1].gold_mean:.3f}", kl=f"{results[-1].rollout.kl:.2f}", refresh=False)
    finally:
        bar.close()
        trainer.monitor.close()
    return trainer, evaluations, results


def story_table(
    before: PolicyEvaluation, after: PolicyEvaluation, prompts: List[str], rows: int, samples: int
) -> List[Dict[str, object]]:
    """The first sample of the first ``rows`` held-out openings, before and after, with their gold scores."""
    table = []
    for i in range(min(rows, len(prompts))):
        k = i * samples
        table.append(
            {
                "prompt": prompts[i],
                "before": before.texts[k],
                "after": after.texts[k],
                "gold_before": before.gold[k],
                "gold_after": after.gold[k],
            }
        )
    return table


def _cell(text: str, limit: int = 100) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[:limit] + "…"


def story_effect_table(rows: List[Dict[str, object]]) -> str:
    """Markdown: opening | story before | story after | gold before | gold after."""
    lines = ["| opening | before PPO (pretrained) | after PPO | gold before | gold after |", "|---|---|---|---:|---:|"]
    for row in rows:
        lines.append(
            f"| {_cell(row['prompt'], 40)} | {_cell(row['before'])} | {_cell(row['after'])} "
            f"| {row['gold_before']:+.3f} | {row['gold_after']:+.3f} |"
        )
    return "\n".join(lines)


def write_story_plots(result: StoryDemoResult, rm_losses: List[float], folder: str) -> Dict[str, str]:
    from mindrlhf.tools.loss_plot import write_curve_png

    plots = {
        "rm_loss.png": (rm_losses, "stage 2: proxy reward-model loss", "step", "loss", 1),
        "gold_reward.png": (result.gold_curve, "held-out gold (VADER) mean, 0 = before PPO", "iteration", "gold", 0),
        "proxy_reward.png": (result.proxy_curve, "stage 3: proxy reward (rollout mean)", "iteration", "proxy", 1),
        "ppo_kl.png": (result.kl_curve, "stage 3: KL(policy || pretrained) per rollout", "iteration", "KL", 1),
    }
    written = {}
    for name, (ys, title, xlabel, ylabel, first) in plots.items():
        path = os.path.join(folder, name)
        write_curve_png(path, list(range(first, len(ys) + first)), ys, title, xlabel, ylabel)
        written[name] = path
    return written


def write_story_report(result: StoryDemoResult, settings: StoryDemoSettings, folder: str) -> str:
    from mindrlhf.atomic import write_text

    gain = result.gold_after - result.gold_before
    outcome = result.gold_outcome
    wins, ties, losses = outcome["wins"], outcome["ties"], outcome["losses"]
    seconds = result.seconds
    stage_rows = "\n".join(
        [
            f"| data | {settings.train_prompts} train / {settings.eval_prompts} held-out openings, gold-labelled pairs "
            f"| {seconds['data']:.0f} |",
            f"| 2 proxy reward model | held-out pair accuracy against the gold labels **{result.rm_accuracy:.3f}** "
            f"({result.rm_pairs} pairs) | {seconds['rm']:.0f} |",
            f"| 3 PPO ({settings.ppo_iterations} x {settings.ppo_rollouts} rollouts) | held-out gold mean "
            f"{result.gold_before:.3f} -> **{result.gold_after:.3f}** ({gain:+.3f}; initial std "
            f"{result.gold_std_before:.3f}), proxy {result.proxy_before:.3f} -> {result.proxy_after:.3f}, KL "
            f"{result.kl_after:.2f} | {seconds['ppo']:.0f} |",
        ]
    )
    text = f"""# mindrlhf demo: a real pretrained model learns from a proxy reward model, judged by a gold judge

TinyStories-656K (bundled, pretrained; Llama, grouped-query attention), CPU, seed {settings.seed}. Gold judge: VADER
sentiment of each continuation (never trained on). {settings.eval_prompts} held-out openings x {settings.eval_samples}
samples, the same sampling seeds before and after.

| stage | result | seconds |
|---|---|---:|
{stage_rows}

Held-out gold mean after each iteration (0 = before): {", ".join(f"{g:.3f}" for g in result.gold_curve)}

Sample by sample (the same opening and sampling seed before and after, as `mindrlhf eval` counts), the PPO policy's
story wins {wins}, ties {ties} and loses {losses} of {outcome["questions"]} by the gold judge: win rate
**{outcome["win_rate"]:.3f}** (95% bootstrap interval [{outcome["ci_low"]:.3f}, {outcome["ci_high"]:.3f}]; 0.5 = no
change).

## Before and after PPO (held-out openings, same sampling seed)

{story_effect_table(result.table)}

Plots: `gold_reward.png`, `proxy_reward.png`, `ppo_kl.png`, `rm_loss.png`. TensorBoard: `tensorboard --logdir {folder}`.
"""
    return write_text(os.path.join(folder, "report.md"), text)


def run_story_demo(settings: StoryDemoSettings) -> StoryDemoResult:
    """Run the story pipeline and write the report; returns what was measured."""
    from mindrlhf.data.tokenizer import load_tokenizer
    from mindrlhf.atomic import write_json
    from mindrlhf.evaluation import paired_outcome
    from mindrlhf.models.convert import BUNDLED_MODELS

    folder = os.path.abspath(settings.output_dir)
    os.makedirs(folder, exist_ok=True)
    protocol = StoryProtocol(
        train_prompts=settings.train_prompts,
        eval_prompts=settings.eval_prompts,
        eval_samples=settings.eval_samples,
        new_tokens=settings.new_tokens,
        seed=settings.seed,
    )
    rm_cfg, ppo_cfg = _recipes(settings, folder)
    tokenizer = load_tokenizer(BUNDLED_MODELS["tinystories"])
    seconds, tick = {}, time.perf_counter()
    data = _story_data(ppo_cfg, tokenizer, protocol, os.path.join(folder, "data"))
    seconds["data"], tick = time.perf_counter() - tick, time.perf_counter()
    reward_checkpoint, rm_losses, accuracy = train_proxy(settings, rm_cfg, data, protocol)
    seconds["rm"], tick = time.perf_counter() - tick, time.perf_counter()
    _, evaluations, results = run_ppo_with_gold(settings, ppo_cfg, rm_cfg, data, reward_checkpoint, tokenizer, protocol)
    seconds["ppo"] = time.perf_counter() - tick
    before, after = evaluations[0], evaluations[-1]
    openings = [tokenizer.decode(row.tolist()) for row in data.eval_prompts]
    result = StoryDemoResult(
        rm_accuracy=accuracy,
        rm_pairs=len(data.eval_pairs.chosen),
        gold_before=before.gold_mean,
        gold_after=after.gold_mean,
        gold_std_before=before.gold_std,
        proxy_before=before.proxy_mean,
        proxy_after=after.proxy_mean,
        kl_after=after.kl,
        gold_curve=[e.gold_mean for e in evaluations],
        proxy_curve=[r.rollout.score_mean for r in results],
        kl_curve=[r.rollout.kl for r in results],
        table=story_table(before, after, openings, settings.table_rows, settings.eval_samples),
        seconds=seconds,
        gold_outcome=paired_outcome(before.gold, after.gold),
    )
    result.files = write_story_plots(result, rm_losses, folder)
    result.files["report.md"] = write_story_report(result, settings, folder)
    result.files["summary.json"] = write_json(
        os.path.join(folder, "summary.json"),
        {**dataclasses.asdict(result), "settings": dataclasses.asdict(settings)},
        ensure_ascii=False,
    )
    return result


def _story_data(ppo_cfg, tokenizer, protocol: StoryProtocol, folder: str):
    """The pretrained policy samples the openings and pairs (it is discarded afterwards)."""
    from mindrlhf.models import CausalLM
    from mindrlhf.models.convert import BUNDLED_MODELS, load_weights

    cfg = ppo_cfg.model.model_config
    policy = CausalLM(cfg)
    load_weights(policy, BUNDLED_MODELS["tinystories"], cfg)
    return prepare_story_data(policy, cfg, tokenizer, protocol, folder)
