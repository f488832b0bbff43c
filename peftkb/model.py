"""The typed core: pydantic models of the taxonomy and the catalog.

Field names are the same in YAML, in these models and in JSON output. Every model forbids unknown
fields, so a typo in a catalog file is an error rather than silently ignored data.
"""
from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
CATEGORY_ID_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*(?:/[a-z0-9]+(?:-[a-z0-9]+)*)*$")
# new-style arXiv ids (YYMM.NNNN[N], optional version) and old-style (archive/YYMMNNN)
ARXIV_RE = re.compile(r"^(?:\d{4}\.\d{4,5}|[a-z-]+(?:\.[A-Z]{2})?/\d{7})(?:v\d+)?$")
DOI_RE = re.compile(r"^10\.\d{4,9}/\S+$")
URL_RE = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)
MIN_YEAR, MAX_YEAR = 1980, 2030
IDENTIFIER_RE = re.compile(r"^[a-z][a-z0-9_]*$")

Confidence = Literal["high", "medium", "low", "not-in-survey"]
Insertion = Literal["attention", "ffn", "embeddings", "layernorm", "input", "output", "all", "cross-attention"]
Overhead = Literal["none", "none-when-merged", "extra-modules", "longer-sequence", "extra-model", "dequantization"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _check_url(value: str | None) -> str | None:
    if value is not None and not URL_RE.match(value):
        raise ValueError("only http(s) URLs are allowed")
    return value


def _check_year(value: int) -> int:
    if not MIN_YEAR <= value <= MAX_YEAR:
        raise ValueError(f"year {value} is outside {MIN_YEAR}..{MAX_YEAR}")
    return value


# -- taxonomy --------------------------------------------------------------------------------------
class Category(Strict):
    id: str = Field(pattern=CATEGORY_ID_RE.pattern)
    name: str = Field(min_length=1)
    parent: str | None = None
    definition: str = Field(min_length=1)
    placements: list[str] = []
    survey_key: str | None = Field(None, description="this node's id in the survey's method list, taxonomy/survey-xu2023.yaml")
    survey: bool = True  # False for the baseline node, which is not one of the survey's categories

    @property
    def depth(self) -> int:
        return self.id.count("/")

    @property
    def slug(self) -> str:
        return self.id.rsplit("/", 1)[-1]


# -- catalog entries -------------------------------------------------------------------------------
class SurveyPlacement(Strict):
    """Where Xu et al. (arXiv 2312.12148) place the method, and how sure we are of it."""

    leaf: str | None = Field(None, description="taxonomy id of the survey's leaf; null if not in survey")
    confidence: Confidence
    in_experiments: bool = False  # one of the 11 methods (or the FT baseline) of its experiments
    label: str | None = Field(None, description="the survey's own name for the method, when it differs")

    @model_validator(mode="after")
    def _leaf_matches_confidence(self) -> "SurveyPlacement":
        if self.confidence == "not-in-survey" and self.leaf:
            raise ValueError("a method not in the survey has no survey leaf")
        if self.confidence != "not-in-survey" and not self.leaf:
            raise ValueError("a method placed by the survey needs its leaf")
        return self


class Paper(Strict):
    role: Literal["original", "extension", "analysis", "survey"] = "original"
    title: str = Field(min_length=1)
    authors: list[str] = Field(min_length=1)
    year: int
    venue: str | None = None
    arxiv: str | None = None
    doi: str | None = None
    url: str | None = None

    _year = field_validator("year")(classmethod(lambda cls, v: _check_year(v)))
    _url = field_validator("url")(classmethod(lambda cls, v: _check_url(v)))

    @field_validator("arxiv")
    @classmethod
    def _arxiv(cls, value: str | None) -> str | None:
        if value is not None and not ARXIV_RE.match(value):
            raise ValueError(f"'{value}' is not an arXiv id (like 2106.09685 or hep-th/9901001)")
        return value

    @field_validator("doi")
    @classmethod
    def _doi(cls, value: str | None) -> str | None:
        if value is not None and not DOI_RE.match(value):
            raise ValueError(f"'{value}' is not a DOI (like 10.18653/v1/2021.acl-long.353)")
        return value


class DefaultSource(Strict):
    """Where a hyperparameter's default comes from. Prefer the paper; say which library and version otherwise."""

    kind: Literal["paper", "authors-code", "library"]
    ref: str = Field(min_length=1, description="e.g. '§4.1, Table 9', 'peft 0.21.2 LoraConfig.lora_alpha', "
                                                "'authors' repo path/file.py @ commit'")
    url: str | None = None

    _url = field_validator("url")(classmethod(lambda cls, v: _check_url(v)))


class Hyperparameter(Strict):
    name: str = Field(pattern=IDENTIFIER_RE.pattern)
    type: Literal["int", "float", "bool", "str", "list[str]", "list[int]"]
    default: Any = None
    meaning: str = Field(min_length=1)
    range: str | None = Field(None, description="allowed values: '[lo, hi]', '(lo, hi)', '[lo, hi)', 'lo..hi' "
                                                 "(= [lo, hi]), '>= x', '> x'; bounds are formulas or inf")
    choices: list[str] | None = Field(None, min_length=2, description="the values a str hyperparameter may take "
                                                                      "(required where a formula tests it with if_eq)")
    source: DefaultSource | None = Field(None, description="where the default comes from")
    differs: str | None = Field(None, description="where the paper, the authors' code and libraries disagree "
                                                  "on the default, e.g. 'peft 0.21.2: 8; authors' scripts: 16'")

    @model_validator(mode="after")
    def _default_has_type(self) -> "Hyperparameter":
        d = self.default
        ok = {
            "int": lambda: isinstance(d, int) and not isinstance(d, bool),
            "float": lambda: isinstance(d, (int, float)) and not isinstance(d, bool),
            "bool": lambda: isinstance(d, bool),
            "str": lambda: isinstance(d, str),
            "list[str]": lambda: isinstance(d, list) and all(isinstance(x, str) for x in d),
            "list[int]": lambda: isinstance(d, list) and all(isinstance(x, int) for x in d),
        }[self.type]
        if d is not None and not ok():
            raise ValueError(f"default {d!r} is not of type {self.type}")
        if self.choices is not None:
            if self.type != "str":
                raise ValueError(f"choices apply to str hyperparameters, not {self.type}")
            if len(set(self.choices)) != len(self.choices):
                raise ValueError(f"choices repeat a value: {self.choices}")
            if d is not None and d not in self.choices:
                raise ValueError(f"default {d!r} is not one of the choices {self.choices}")
        return self


Role = Literal["q", "k", "v", "o", "up", "gate", "down"]


class TrainableParams(Strict):
    """Trainable-parameter count as formulas; the total is the sum of the three scopes.

    per_target: summed over every targeted module (symbols d_in, d_out are that module's sizes);
    per_layer:  counted once per block, times n_layers;
    total:      counted once (e.g. soft prompts, a task head shared by all layers).
    """

    per_target: str | None = None
    per_layer: str | None = None
    total: str | None = None
    targets: list[Role] = Field(default_factory=list, description="module roles per_target sums over")
    exact: bool = True
    note: str | None = None

    @model_validator(mode="after")
    def _some_formula(self) -> "TrainableParams":
        if not (self.per_target or self.per_layer or self.total):
            raise ValueError("give at least one of per_target, per_layer, total")
        if self.per_target and not self.targets:
            raise ValueError("per_target needs the module roles it sums over in `targets`")
        return self

    def formulas(self) -> dict[str, str]:
        return {k: v for k, v in (("per_target", self.per_target), ("per_layer", self.per_layer),
                                  ("total", self.total)) if v}


class Properties(Strict):
    inserts_at: list[Insertion] = Field(min_length=1)
    placement: Literal["sequential", "residual", "parallel"] | None = None
    mergeable: bool
    inference_overhead: Overhead
    changes_sequence_length: bool = False
    needs_quantized_base: bool = False
    supports_multi_task: bool = False
    trains_base_weights: bool = False


class Relations(Strict):
    variant_of: list[str] = []
    extends: list[str] = []
    combines: list[str] = []
    generalizes: list[str] = []
    related_to: list[str] = Field([], description="an undirected link, e.g. to a later method this one anticipates; "
                                                  "no chronology implied")

    def edges(self) -> list[tuple[str, str]]:
        """(relation, target id) pairs, in a fixed order."""
        return [(kind, target) for kind in RELATION_KINDS for target in getattr(self, kind)]


# The relation kinds live in peftkb.query (light, no pydantic) so that the read commands and the schema
# share one definition. LINEAGE_KINDS: the relations that say "this method comes after its target".
from peftkb.query import LINEAGE_KINDS, RELATION_KINDS  # noqa: E402


class PeftImpl(Strict):
    peft_type: str = Field(description="a member of peft.PeftType")
    option: str | None = Field(None, description="the config option that turns the method on, e.g. use_dora=True")
    config: str | None = Field(None, description="the peft config class")


class AdaptersImpl(Strict):
    config: str = Field(description="AdapterHub `adapters` config identifier, e.g. seq_bn")


class Implementations(Strict):
    reference: str | None = Field(None, description="path of the reference implementation, under reference_impls/")
    peft: PeftImpl | None = None
    adapters: list[AdaptersImpl] = []


#: The classes of each other taxonomy (README, "Coverage and other taxonomies"; `peftkb crosswalk`).
CROSSWALK_SCHEMES: dict[str, tuple[str, tuple[str, ...]]] = {
    "han2024": ("Han et al. 2024, arXiv 2403.14608", ("additive", "selective", "reparameterized", "hybrid")),
    "lialin2023": ("Lialin et al. 2023, arXiv 2303.15647",
                   ("additive/adapters", "additive/soft-prompts", "additive/other", "selective",
                    "reparametrization", "hybrid")),
    "ding2023": ("Ding et al. 2023, Nature Machine Intelligence, arXiv 2203.06904",
                 ("addition", "specification", "reparameterization")),
    "peft_docs": ("Hugging Face PEFT documentation", ("soft-prompting", "adapters", "layer-tuning")),
}


class CrosswalkEntry(Strict):
    class_: str = Field(alias="class")
    source: Literal["stated", "derived"]
    where: str | None = Field(None, description="section of that survey naming the method (required when stated)")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _stated_has_section(self) -> "CrosswalkEntry":
        if self.source == "stated" and not self.where:
            raise ValueError("a `stated` class must say where that survey states it (`where`)")
        return self


class Crosswalk(Strict):
    han2024: CrosswalkEntry | None = None
    lialin2023: CrosswalkEntry | None = None
    ding2023: CrosswalkEntry | None = None
    peft_docs: CrosswalkEntry | None = None

    @model_validator(mode="after")
    def _classes_exist(self) -> "Crosswalk":
        for scheme, (_, classes) in CROSSWALK_SCHEMES.items():
            entry = getattr(self, scheme)
            if entry is not None and entry.class_ not in classes:
                raise ValueError(f"{scheme}: class '{entry.class_}' is not one of {', '.join(classes)}")
        return self


class Method(Strict):
    id: str = Field(pattern=ID_RE.pattern)
    name: str = Field(min_length=1)
    full_name: str | None = None
    aliases: list[str] = []
    kind: Literal["method", "baseline"] = "method"
    category: str
    survey: SurveyPlacement
    year: int
    summary: str = Field(min_length=20, max_length=1200)
    papers: list[Paper] = []
    hyperparameters: list[Hyperparameter] = []
    trainable_params: TrainableParams | None = None
    properties: Properties
    relations: Relations = Relations()
    implementations: Implementations = Implementations()
    crosswalk: Crosswalk | None = None
    tags: list[str] = []
    notes: str | None = None

    _year = field_validator("year")(classmethod(lambda cls, v: _check_year(v)))

    @property
    def hyperparameter_names(self) -> set[str]:
        return {h.name for h in self.hyperparameters}

    def defaults(self) -> dict[str, Any]:
        return {h.name: h.default for h in self.hyperparameters}

    @property
    def original_paper(self) -> Paper | None:
        return next((p for p in self.papers if p.role == "original"), self.papers[0] if self.papers else None)


class Catalog(BaseModel):
    """The validated taxonomy and methods, in file order. Build it with `peftkb.loader.load_catalog`."""

    model_config = ConfigDict(frozen=True)

    categories: list[Category]
    methods: list[Method]
