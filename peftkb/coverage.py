"""What the catalog lacks, measured against the survey's method list and against installed `peft`.

`against_survey` reads the survey's taxonomy file (`taxonomy/survey-xu2023.yaml` in the knowledge base,
or a path given) and matches each method by name or alias; a match must sit in the same leaf with the
same placement confidence. `against_peft` introspects the installed `peft`: every `PeftType` member
and the LoRA options that are methods of their own in the literature must be named by some entry's
`implementations.peft`. peft is imported only inside `against_peft`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from peftkb.model import Catalog, Method

#: LoRA options of peft that the literature treats as methods: option key -> how to find it in peft.
#: The key is what a catalog entry's `implementations.peft.option` must mention.
PEFT_LORA_METHOD_OPTIONS: dict[str, str] = {
    "use_dora": "LoraConfig field",
    "use_rslora": "LoraConfig field",
    "init_lora_weights='pissa'": "init_lora_weights value",
    "init_lora_weights='olora'": "init_lora_weights value",
    "init_lora_weights='eva'": "init_lora_weights value",
    "init_lora_weights='corda'": "init_lora_weights value",
    "init_lora_weights='loftq'": "init_lora_weights value",
    "use_qalora": "LoraConfig field",
    "lora_ga_config": "LoraConfig field",
    "create_loraplus_optimizer": "peft.optimizers function",
    "create_lorafa_optimizer": "peft.optimizers function",
}


@dataclass(frozen=True)
class Gap:
    kind: str  # missing | misplaced | confidence | not-in-peft
    subject: str
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "subject": self.subject, "detail": self.detail}


def _norm(text: str) -> str:
    folded = text.casefold().replace("^3", "3").replace("³", "3").replace("+", "plus")  # LoRA+ is not LoRA
    return re.sub(r"[^a-z0-9]", "", folded)


def _names(m: Method) -> set[str]:
    return {_norm(n) for n in (m.id, m.name, m.full_name or "", *m.aliases) if n}


def default_survey_file(root: Path) -> Path:
    """The survey's method list that ships with the knowledge base."""
    from peftkb.cache import SURVEY_FILE

    return root / SURVEY_FILE


def survey_methods(path: Path) -> list[dict]:
    """(name, aka, survey leaf key, confidence, in_experiments) of every method in the survey file."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    out: list[dict] = []

    def walk(nodes: list[dict]) -> None:
        for node in nodes:
            for method in node.get("methods", []) or []:
                out.append({"name": method["name"], "aka": method.get("aka", []) or [], "leaf": node["id"],
                            "confidence": method.get("placement_confidence"),
                            "in_experiments": bool(method.get("in_survey_experiments", False))})
            walk(node.get("subcategories", []) or [])

    walk(data["taxonomy"])
    return out


def against_survey(catalog: Catalog, survey_file: Path) -> list[Gap]:
    by_key = {c.survey_key: c.id for c in catalog.categories if c.survey_key}
    gaps: list[Gap] = []
    for entry in survey_methods(survey_file):
        # aka entries may carry a parenthesised remark: keep only the name before it
        wanted = {_norm(entry["name"])} | {_norm(a.split(" (")[0]) for a in entry["aka"]}
        match = next((m for m in catalog.methods if _names(m) & wanted), None)
        leaf = by_key.get(entry["leaf"], entry["leaf"])
        if match is None:
            gaps.append(Gap("missing", entry["name"], f"no entry named {entry['name']!r} (survey leaf {leaf})"))
            continue
        if match.survey.leaf != leaf:
            gaps.append(Gap("misplaced", entry["name"], f"{match.id}: survey.leaf is {match.survey.leaf!r}, the survey file says {leaf!r}"))
        if match.survey.confidence != entry["confidence"]:
            gaps.append(Gap("confidence", entry["name"], f"{match.id}: confidence {match.survey.confidence!r}, the survey file says {entry['confidence']!r}"))
        if entry["in_experiments"] and not match.survey.in_experiments:
            gaps.append(Gap("experiments", entry["name"], f"{match.id}: the survey file lists it among the experiment methods"))
    return gaps


def peft_inventory() -> tuple[list[str], dict[str, bool], list[str]]:
    """(PeftType names, {lora option: present in this peft}, other init_lora_weights values)."""
    import dataclasses
    import typing

    import peft
    from peft import LoraConfig

    types = [t.name for t in peft.PeftType]
    fields = {f.name: f for f in dataclasses.fields(LoraConfig)}
    init_values: list[str] = []
    annotation = typing.get_type_hints(LoraConfig).get("init_lora_weights")
    for arg in typing.get_args(annotation):
        init_values += [v for v in typing.get_args(arg) if isinstance(v, str)]
    try:
        import peft.optimizers as optimizers
        functions = set(dir(optimizers))
    except ImportError:
        functions = set()
    present = {}
    for option in PEFT_LORA_METHOD_OPTIONS:
        if option.startswith("init_lora_weights="):
            present[option] = option.split("'")[1] in init_values
        elif option.startswith("create_"):
            present[option] = option in functions
        else:
            present[option] = option in fields
    others = sorted(v for v in init_values if v not in {o.split("'")[1] for o in PEFT_LORA_METHOD_OPTIONS if "'" in o})
    return types, present, others


def against_peft(catalog: Catalog) -> list[Gap]:
    types, options, _ = peft_inventory()
    covered_types = {m.implementations.peft.peft_type for m in catalog.methods if m.implementations.peft}
    gaps = [Gap("missing", t, f"no entry has implementations.peft.peft_type: {t}") for t in types if t not in covered_types]
    def squash(text: str) -> str:  # `init_lora_weights="pissa"` and `init_lora_weights = 'pissa'` agree
        return re.sub(r"[\s'\"]", "", text)

    named_options = [squash(m.implementations.peft.option or "") for m in catalog.methods if m.implementations.peft]
    for option, present in options.items():
        if not present:
            gaps.append(Gap("not-in-peft", option, "this peft version no longer has the option"))
        elif not any(squash(option) in text for text in named_options):
            gaps.append(Gap("missing", option, f"no entry has implementations.peft.option mentioning {option}"))
    for m in catalog.methods:
        if m.implementations.peft and m.implementations.peft.peft_type not in types:
            gaps.append(Gap("unknown", m.id, f"peft_type {m.implementations.peft.peft_type!r} is not a member of peft.PeftType"))
    return gaps
