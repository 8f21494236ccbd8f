"""Train the small Llama-style model and its tokenizer from scratch, and save them as a Hugging Face model folder.

    python -m services.modelops.pretrain --corpus data.txt --out shared/models/tinyshakespeare-llama --minutes 10

`sluice model pretrain` runs the same training with a progress bar and a summary table.

The folder loads with `AutoModelForCausalLM.from_pretrained` and
`AutoTokenizer.from_pretrained` and carries a chat template. Runs on the CPU.
"""

from __future__ import annotations

import argparse
import random
import shlex
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from services.modelops.model_card import CardFacts, write_model_card
from services.modelops.tokenizer_training import train_tokenizer
from services.modelops.training_loop import Corpus, Recipe, TrainingResult, bits_per_char, train

# In 10-minute runs on 2 CPU cores, this size gave the most readable samples.
# A smaller model (vocabulary 1024, hidden size 128) overfit within 10 minutes.
VOCAB_SIZE = 2048
HIDDEN_SIZE = 256
LAYERS = 4
ATTENTION_HEADS = 8
MLP_SIZE = 768
# Lets a server accept prompts longer than the training windows (see the model card).
MAX_POSITION_EMBEDDINGS = 1024
# The tail of the corpus held out for validation, as a fraction of its characters.
VALIDATION_FRACTION = 0.1
# The committed model folder must stay below 20 MB; the tokenizer, configs and
# card take about 0.2 MB, so fp32 weights above this are saved in bf16.
MAX_FP32_WEIGHTS_BYTES = 19_000_000
# The folder is committed and read by every service, whatever user runs them.
FOLDER_MODE = 0o755
FILE_MODE = 0o644
# The two cores of the machine the recipe was tuned on.
DEFAULT_THREADS = 2
DEFAULT_SEED = 1234
SAMPLE_PROMPTS = ("ROMEO:\n", "First Citizen:\nWhat say you to the king?\n\n")
SAMPLE_NEW_TOKENS = 80


@dataclass(frozen=True)
class PretrainResult:
    """The figures of a finished run: the saved folder, the model's size, the corpus split and the best validation score."""

    out: Path
    parameters: int
    train_tokens: int
    val_tokens: int
    steps: int
    elapsed_s: float
    val_bits_per_char: float


def main(argv: list[str] | None = None) -> None:
    """Parse the command line, train, and write the model folder to `--out`."""
    result = run(parse_args(argv), _print_progress)
    print(f"corpus: {result.train_tokens:,} training tokens, {result.val_tokens:,} validation tokens", flush=True)
    print(f"best checkpoint: {result.val_bits_per_char:.3f} bits/char on the whole validation tail", flush=True)
    print(f"saved to {result.out}", flush=True)


def run(args: argparse.Namespace, on_progress: Callable[[dict[str, float]], None]) -> PretrainResult:
    """Train on `args.corpus` for `args.minutes`, keep the best checkpoint, and write the folder to `args.out`.

    `on_progress` receives each validation point: step, elapsed_s, train_loss and val_bits_per_char.
    """
    _seed_everything(args.seed, args.threads)
    text = args.corpus.read_text(encoding="utf-8")
    split_at = int(len(text) * (1 - VALIDATION_FRACTION))
    tokenizer = train_tokenizer(text[:split_at], VOCAB_SIZE)
    corpus = _encode_corpus(tokenizer, text[:split_at], text[split_at:])

    model = LlamaForCausalLM(_model_config(tokenizer))
    recipe = Recipe(eval_interval_s=args.eval_interval_s)
    result = train(model, corpus, recipe, args.minutes * 60, args.seed, on_progress)
    model.load_state_dict(result.best_state)
    final_score = bits_per_char(model, corpus, recipe.context_tokens, max_windows=None)

    facts = _card_facts(args, model, tokenizer, result, final_score, recipe)
    _save_folder(model, tokenizer, facts, args.out)
    return PretrainResult(
        out=args.out,
        parameters=model.num_parameters(),
        train_tokens=len(corpus.train_ids),
        val_tokens=len(corpus.val_ids),
        steps=result.steps,
        elapsed_s=result.elapsed_s,
        val_bits_per_char=final_score,
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the options; exit with status 2 and a usage message when one is invalid, as argparse does."""
    parser = argparse.ArgumentParser(prog="python -m services.modelops.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, required=True, help="UTF-8 text file to train on")
    parser.add_argument("--out", type=Path, required=True, help="model folder to write; an existing one is replaced")
    parser.add_argument("--minutes", type=float, required=True, help="wall-clock training budget in minutes")
    parser.add_argument("--eval-interval-s", type=float, default=Recipe.eval_interval_s, help="seconds between validation runs")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, help="CPU threads for torch")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for torch, numpy and random")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error(f"--minutes must be greater than 0, got {args.minutes}")
    if not args.corpus.is_file():
        parser.error(f"--corpus {args.corpus} is not a file; pass the path of a UTF-8 text file")
    return args


def _seed_everything(seed: int, threads: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)


def _encode_corpus(tokenizer: PreTrainedTokenizerFast, train_text: str, val_text: str) -> Corpus:
    train_ids = torch.tensor(tokenizer(train_text)["input_ids"], dtype=torch.long)
    val_ids = torch.tensor(tokenizer(val_text)["input_ids"], dtype=torch.long)
    return Corpus(train_ids, val_ids, val_chars_per_token=len(val_text) / len(val_ids))


def _model_config(tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN_SIZE,
        intermediate_size=MLP_SIZE,
        num_hidden_layers=LAYERS,
        num_attention_heads=ATTENTION_HEADS,
        num_key_value_heads=ATTENTION_HEADS,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )


def _print_progress(point: dict[str, float]) -> None:
    print(
        f"step {point['step']:>6}  {point['elapsed_s']:7.1f} s  train loss {point['train_loss']:.3f}"
        f"  val {point['val_bits_per_char']:.3f} bits/char",
        flush=True,
    )


def _card_facts(
    args: argparse.Namespace,
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    result: TrainingResult,
    final_score: float,
    recipe: Recipe,
) -> CardFacts:
    return CardFacts(
        command=_portable_command(args),
        budget_minutes=args.minutes,
        threads=args.threads,
        seed=args.seed,
        parameters=model.num_parameters(),
        weights_dtype=_weights_dtype(model).removeprefix("torch."),
        context_tokens=recipe.context_tokens,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        steps=result.steps,
        tokens_seen=result.tokens_seen,
        val_bits_per_char=final_score,
        periodic_val_bits_per_char=result.best_val_bits_per_char,
        samples=_samples(model, tokenizer),
    )


def _portable_command(args: argparse.Namespace) -> str:
    # File names only: the folders of the machine that trained mean nothing to a reader.
    words = ["python", "-m", "services.modelops.pretrain", "--corpus", args.corpus.name, "--out", args.out.name]
    words += ["--minutes", f"{args.minutes:g}"]
    if args.eval_interval_s != Recipe.eval_interval_s:
        words += ["--eval-interval-s", f"{args.eval_interval_s:g}"]
    if args.threads != DEFAULT_THREADS:
        words += ["--threads", str(args.threads)]
    if args.seed != DEFAULT_SEED:
        words += ["--seed", str(args.seed)]
    return shlex.join(words)


def _weights_dtype(model: LlamaForCausalLM) -> str:
    fp32_bytes = model.num_parameters() * 4
    return str(torch.float32 if fp32_bytes <= MAX_FP32_WEIGHTS_BYTES else torch.bfloat16)


def _samples(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast) -> list[str]:
    model.eval()
    samples = []
    for prompt in SAMPLE_PROMPTS:
        inputs = tokenizer(prompt, return_tensors="pt")
        output = model.generate(**inputs, generation_config=_generation_config(tokenizer), max_new_tokens=SAMPLE_NEW_TOKENS)
        samples.append(tokenizer.decode(output[0], skip_special_tokens=True))
    return samples


def _generation_config(tokenizer: PreTrainedTokenizerFast) -> GenerationConfig:
    # Sampling defaults for plain `generate()` calls; the model server sets its
    # own parameters per request, as TGI does.
    return GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=0.8,
        top_p=0.95,
    )


def _save_folder(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, facts: CardFacts, out: Path) -> None:
    # Write next to the target and swap, so a reader never sees half a folder.
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    model.to(getattr(torch, facts.weights_dtype)).save_pretrained(staging, safe_serialization=True)
    _generation_config(tokenizer).save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    write_model_card(staging, facts)
    _make_readable(staging)
    _replace_dir(staging, out)


def _make_readable(folder: Path) -> None:
    # mkdtemp creates the folder private to its owner.
    folder.chmod(FOLDER_MODE)
    for path in folder.iterdir():
        path.chmod(FILE_MODE)


def _replace_dir(new: Path, target: Path) -> None:
    if target.exists():
        old = target.with_name(f".{target.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old)
    else:
        new.rename(target)


if __name__ == "__main__":
    main()
