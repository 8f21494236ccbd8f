"""The labelled prompt files, their mapping to the classifier's classes, and the fixed held-out split.

Each file is JSON lines with `text` and `label` (injection, harmful or
benign), and some carry a `group` or `type`. The classes map as follows:

| file | rows | class |
| --- | --- | --- |
| deepset_attacks | 149 | injection |
| giskard, group "Jailbreak" | 20 | jailbreak (DAN-style role-play that lifts the model's rules) |
| giskard, group "Hijacking attacks" | 15 | injection |
| bipia_text_attacks | 75 | injection |
| jbb_attacks | 72 | harmful |
| xstest, label harmful | 137 | harmful |
| every row labelled benign | 729 | benign |

XSTest's unsafe prompts train the harmful class because each one is the
near twin of a safe prompt ("how do I kill a person" beside "how do I kill
a Python process"), which is the boundary the head must learn to keep the
safe ones passing. The held-out part of XSTest is kept for evaluation as
for every other file.

The held-out split takes `HELDOUT_FRACTION` of every (file, class) group,
chosen with a fixed seed, and is stored as the SHA-256 digests of the
texts, so evaluation reads exactly that split and training excludes it.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

CLASSES = ("benign", "injection", "jailbreak", "harmful")
BENIGN = "benign"
ATTACK_CLASSES = ("injection", "jailbreak", "harmful")

# The benign files whose held-out part measures false positives.
BENIGN_FILES = ("deepset_benign", "mt_bench", "self_instruct_user", "jbb_benign")
XSTEST_FILE = "xstest"

# About 30% of each group keeps at least 6 held-out rows in the smallest
# group (giskard's 20 jailbreaks) while leaving 70% for training.
HELDOUT_FRACTION = 0.3
SPLIT_SEED = 20250501

# The giskard file marks DAN-style jailbreaks with this `group`.
_GISKARD_JAILBREAK_GROUP = "Jailbreak"


@dataclass(frozen=True)
class LabelledPrompt:
    """One row of a prompt file with its classifier class."""

    text: str
    # The file's name without ".jsonl", such as "deepset_attacks".
    file: str
    # The row's `label` in the file: injection, harmful or benign.
    label: str
    # One of CLASSES.
    target: str

    @property
    def digest(self) -> str:
        """The SHA-256 of the text in UTF-8, as hex: the row's id in the held-out split file."""
        return text_digest(self.text)


def text_digest(text: str) -> str:
    """Return the hex SHA-256 of `text` encoded as UTF-8."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load_prompts(folder: Path) -> list[LabelledPrompt]:
    """Read every `*.jsonl` file in `folder`, sorted by name; raises `ValueError` on an unknown label."""
    files = sorted(folder.glob("*.jsonl"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl files in {folder}; pass the labelled prompt folder with --data")
    return [prompt for path in files for prompt in _read_file(path)]


def _read_file(path: Path) -> list[LabelledPrompt]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            row = json.loads(line)
            target = _target_class(path.stem, row)
            if target is None:
                raise ValueError(f"{path}:{line_number}: label {row.get('label')!r} is not one of injection, harmful, benign")
            rows.append(LabelledPrompt(text=row["text"], file=path.stem, label=row["label"], target=target))
    return rows


def _target_class(file: str, row: dict[str, object]) -> str | None:
    label = row.get("label")
    if label == "injection" and file == "giskard" and row.get("group") == _GISKARD_JAILBREAK_GROUP:
        return "jailbreak"
    if label in ("injection", "harmful", "benign"):
        return str(label)
    return None


def choose_heldout(prompts: list[LabelledPrompt]) -> set[str]:
    """Return the digests of the held-out rows: `HELDOUT_FRACTION` of each (file, class) group, at least one.

    The choice depends only on the texts and `SPLIT_SEED`, not on file order.
    """
    groups: dict[tuple[str, str], list[str]] = defaultdict(list)
    for prompt in prompts:
        groups[(prompt.file, prompt.target)].append(prompt.digest)

    chosen: set[str] = set()
    for key in sorted(groups):
        digests = sorted(groups[key])
        random.Random(f"{SPLIT_SEED}:{key[0]}:{key[1]}").shuffle(digests)
        chosen.update(digests[: max(1, round(len(digests) * HELDOUT_FRACTION))])
    return chosen


def write_split(path: Path, digests: set[str]) -> None:
    """Write the held-out digests, sorted, one a line, after a comment line that describes them."""
    header = f"# SHA-256 of each held-out prompt text (UTF-8); seed {SPLIT_SEED}, fraction {HELDOUT_FRACTION} per file and class\n"
    path.write_text(header + "".join(f"{digest}\n" for digest in sorted(digests)), encoding="utf-8")


def read_split(path: Path) -> set[str]:
    """Return the digests in a split file written by `write_split`."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}
