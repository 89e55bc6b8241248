"""Grounded attribute extraction: brand, colour, material, age range, piece count, dimensions, scale.

Small generative models loop and invent values, so the model never writes one. For each field, patterns
find the spans of the listing's own text that could be its value (normalised: "Gray" -> "grey",
"3 years and up" -> "3+ years"); a span after an explicit label ("Colour: white", "recommended age:")
is taken as it is; otherwise the model is asked, field by field, to choose among the spans and
"not stated". Every value in the output is therefore a normalised form of something the listing says,
and the whole record is checked against `SCHEMA` before it is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import jsonschema

from enrich.llm.answers import AnswerCache, ask, choice_share
from enrich.settings import AttributeConfig

NOT_STATED = "not stated"
PLACEHOLDER_BRANDS = {"", "generic", "unbranded", "unknown", "n/a", "na", "none", "no brand", "oem", "other"}

COLOURS = {
    "red": "red", "orange": "orange", "yellow": "yellow", "green": "green", "blue": "blue", "purple": "purple",
    "violet": "purple", "pink": "pink", "brown": "brown", "black": "black", "white": "white", "grey": "grey",
    "gray": "grey", "silver": "silver", "gold": "gold", "beige": "beige", "turquoise": "turquoise",
    "navy": "navy", "cream": "cream", "ivory": "ivory", "multicolour": "multicoloured", "multicolor": "multicoloured",
    "multi-colour": "multicoloured", "multi-color": "multicoloured", "multicoloured": "multicoloured",
    "multi-coloured": "multicoloured", "multicolored": "multicoloured", "multi-colored": "multicoloured",
}
MATERIALS = {
    "plastic": "plastic", "wood": "wood", "wooden": "wood", "metal": "metal", "die-cast": "die-cast metal",
    "diecast": "die-cast metal", "die cast": "die-cast metal", "steel": "steel", "stainless steel": "steel",
    "aluminium": "aluminium", "aluminum": "aluminium", "plush": "plush", "cotton": "cotton",
    "polyester": "polyester", "paper": "paper", "cardboard": "cardboard", "rubber": "rubber", "foam": "foam",
    "felt": "felt", "fabric": "fabric", "vinyl": "vinyl", "silicone": "silicone", "resin": "resin",
    "ceramic": "ceramic", "porcelain": "porcelain", "glass": "glass", "latex": "latex", "nylon": "nylon",
    "pvc": "PVC", "abs": "ABS plastic", "eva": "EVA foam", "polyresin": "resin", "tin": "tin",
    "tinplate": "tin", "card": "card", "leather": "leather", "wool": "wool", "bamboo": "bamboo", "clay": "clay",
}


def _words_pattern(words) -> re.Pattern:
    alternatives = sorted(words, key=len, reverse=True)
    return re.compile(r"(?<![\w-])(" + "|".join(re.escape(w) for w in alternatives) + r")(?![\w-])", re.IGNORECASE)


_COLOUR_WORDS = _words_pattern(COLOURS)
_MATERIAL_WORDS = _words_pattern(MATERIALS)
# Labels as scraped catalogs print them, often glued to the value ("Colorwhite", "Material Type(s)Plush").
_COLOUR_LABEL = re.compile(r"colou?r(?:\s*name)?\s*[:\-]?\s*([a-z][a-z\- /]{2,20})", re.IGNORECASE)
_MATERIAL_LABEL = re.compile(
    r"(?:material type\(s\)|main material|material|made (?:of|from))\s*[:\-]?\s*([a-z][a-z\- ]{2,30})", re.IGNORECASE)
_AGE_PATTERNS = [
    (re.compile(r"(\d{1,2})\s*(?:-|to)\s*(\d{1,2})\s*(?:years?|yrs?)", re.I), "{0}-{1} years"),
    (re.compile(r"(\d{1,2})\s*(?:-|to)\s*(\d{1,2})\s*months?", re.I), "{0}-{1} months"),
    (re.compile(r"(\d{1,3})\s*months?\s*(?:-|to)\s*(\d{1,2})\s*(?:years?|yrs?)", re.I), "months-years"),
    (re.compile(r"ages?\s*(\d{1,2})\s*(?:-|to)\s*(\d{1,2})(?!\s*(?:months?|cm|mm))", re.I), "{0}-{1} years"),
    (re.compile(r"(\d{1,2})\s*(?:years?|yrs?)\s*(?:old\s*)?(?:and|&|or)\s*(?:up|over|above|older)", re.I), "{0}+ years"),
    (re.compile(r"(\d{1,2})\s*\+\s*(?:years?|yrs?)", re.I), "{0}+ years"),
    (re.compile(r"ages?\s*:?\s*(\d{1,2})\s*(?:\+|and up|and over|and above|and older|years? and (?:up|over|older))", re.I),
     "{0}+ years"),
    (re.compile(r"(\d{1,2})\s*months?\s*(?:and|&)\s*(?:up|over|above)", re.I), "{0}+ months"),
    (re.compile(r"(\d{1,2})\s*\+\s*months?", re.I), "{0}+ months"),
]
_AGE_LABEL = re.compile(r"recommended age\s*:?\s*", re.I)
_PIECE_PATTERNS = [
    re.compile(r"(?:pack|set|box|bag|tub) of (\d{1,5})\b", re.I),
    re.compile(r"number of (?:puzzle )?pieces\s*:?\s*(\d{1,5})", re.I),
    re.compile(r"\b(\d{1,5})\s*(?:pcs|pieces?|pc|pk|packs?|count|ct)\b", re.I),
    re.compile(r"\b(\d{1,5})[- ](?:piece|pack)\b", re.I),
]
_NUMBER = r"\d+(?:\.\d+)?"
_DIMENSIONS = re.compile(
    rf"(?<![\d.,])({_NUMBER})\s*(?:(?:cm|mm)\s*)?(?:x\s*({_NUMBER})\s*(?:(?:cm|mm)\s*)?)?(?:x\s*({_NUMBER})\s*)?"
    r"(cm|mm|centimet(?:re|er)s?|millimet(?:re|er)s?|inch(?:es)?|(?<=\d)in\b|\"|m\b|metres?|meters?)", re.I)
_DIMENSION_LABEL = re.compile(r"(?:product )?dimensions|measures|height|length|width|size|diameter", re.I)
_SCALE_RATIO = re.compile(r"(?<![\d.])1\s*[:/]\s*(\d{1,3})(?![\d.])")
_GAUGE = re.compile(r"(?<![\w-])(OO|HO|TT|N|O|G)\s*(gauge|scale)\b", re.I)


# A JSON-like object inside a description ({"dimensions": "1 inch"}) is data someone pasted or planted, not what the
# listing says of itself: its values are never read as attributes.
_EMBEDDED_DATA = re.compile(r"\{[^{}]*[\"'][^{}]*[\"']\s*:[^{}]*\}")


def _unit(raw: str) -> str:
    raw = raw.lower()
    if raw.startswith(("inch", "in", '"')):
        return "inch"
    if raw.startswith(("cm", "centim")):
        return "cm"
    if raw.startswith(("mm", "millim")):
        return "mm"
    return "m"


@dataclass(frozen=True)
class Span:
    value: str  # the normalised value
    labelled: bool  # found after an explicit label ("Colour: red"): taken without asking the model


def _unique(spans: list[Span]) -> list[Span]:
    """First occurrence of each value; a value seen labelled anywhere counts as labelled."""
    labelled = {s.value for s in spans if s.labelled}
    seen, out = set(), []
    for s in spans:
        if s.value not in seen:
            seen.add(s.value)
            out.append(Span(s.value, s.value in labelled))
    return out


def _vocabulary_spans(text: str, label: re.Pattern, words: re.Pattern, vocabulary: dict[str, str]) -> list[Span]:
    """Words of a vocabulary: the ones right after the field's label first (labelled), then all the others."""
    spans = []
    for labelled in label.finditer(text):
        first = words.match(labelled.group(1).strip())
        if first:
            spans.append(Span(vocabulary[first.group(1).lower()], True))
    spans += [Span(vocabulary[m.group(1).lower()], False) for m in words.finditer(text)]
    return _unique(spans)


def colour_spans(text: str) -> list[Span]:
    return _vocabulary_spans(text, _COLOUR_LABEL, _COLOUR_WORDS, COLOURS)


def material_spans(text: str) -> list[Span]:
    return _vocabulary_spans(text, _MATERIAL_LABEL, _MATERIAL_WORDS, MATERIALS)


def age_spans(text: str) -> list[Span]:
    found = []
    for pattern, form in _AGE_PATTERNS:
        for m in pattern.finditer(text):
            numbers = [int(g) for g in m.groups()]
            if form == "months-years":  # "36 months - 7 years": whole years, or the lower bound in months
                months, years = numbers
                value = f"{months // 12}-{years} years" if months % 12 == 0 else f"{months}+ months"
            elif len(numbers) == 2 and numbers[0] >= numbers[1]:
                continue
            else:
                value = form.format(*numbers)
            labelled = bool(_AGE_LABEL.search(text[max(0, m.start() - 25): m.start()]))
            found.append((m.start(), Span(value, labelled)))
    return _unique([s for _, s in sorted(found, key=lambda f: f[0])])


def piece_spans(text: str) -> list[Span]:
    found = []
    for pattern in _PIECE_PATTERNS:
        found += [(m.start(), Span(str(int(m.group(1))), False)) for m in pattern.finditer(text) if int(m.group(1)) > 0]
    return _unique([s for _, s in sorted(found, key=lambda f: f[0])])


def dimension_spans(text: str) -> list[Span]:
    spans = []
    for m in _DIMENSIONS.finditer(text):
        numbers = [g for g in m.groups()[:3] if g]
        unit = _unit(m.group(4))
        labelled = bool(_DIMENSION_LABEL.search(text[max(0, m.start() - 20): m.start()]))
        if unit == "m" and not labelled:
            continue  # metres unlabelled are a range or a distance ("flies 20m"), rarely the product's size
        spans.append(Span(" x ".join(numbers) + f" {unit}", labelled))
    return _unique(spans)


def scale_spans(text: str) -> list[Span]:
    found = [(m.start(), Span(f"1:{int(m.group(1))}", bool(re.search(r"scale\s*:?\s*$", text[max(0, m.start() - 8): m.start()], re.I))))
             for m in _SCALE_RATIO.finditer(text) if 8 <= int(m.group(1)) <= 500]
    found += [(m.start(), Span(f"{m.group(1).upper()} {m.group(2).lower()}", False)) for m in _GAUGE.finditer(text)]
    return _unique([s for _, s in sorted(found, key=lambda f: f[0])])


@dataclass(frozen=True)
class Field:
    name: str
    question: str
    find: Callable[[str], list[Span]]
    without_brand: bool = False  # look for spans with the brand's name taken out ("Green Toys" is not green)


FIELDS = (
    Field("colour", "What is the main colour of the product itself?", colour_spans, without_brand=True),
    Field("material", "What material is the product mainly made of?", material_spans, without_brand=True),
    Field("age_range", "What age range is the product recommended for?", age_spans),
    Field("piece_count", "How many pieces or items come in the pack or set?", piece_spans),
    Field("dimensions", "What are the product's dimensions or size?", dimension_spans),
    Field("scale", "What model scale or gauge is the product?", scale_spans),
)
FIELD_NAMES = ("brand",) + tuple(f.name for f in FIELDS)

SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": list(FIELD_NAMES),
    "properties": {
        "brand": {"type": ["string", "null"], "minLength": 1, "maxLength": 100},
        "colour": {"enum": sorted(set(COLOURS.values())) + [None]},
        "material": {"enum": sorted(set(MATERIALS.values())) + [None]},
        "age_range": {"type": ["string", "null"], "pattern": r"^\d{1,2}(\+|-\d{1,2}) (years|months)$"},
        "piece_count": {"type": ["string", "null"], "pattern": r"^\d{1,5}$"},
        "dimensions": {"type": ["string", "null"], "pattern": r"^[\d.]+( x [\d.]+){0,2} (cm|mm|inch|m)$"},
        "scale": {"type": ["string", "null"], "pattern": r"^(1:\d{1,3}|(OO|HO|TT|N|O|G) (gauge|scale))$"},
    },
}


_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)


@dataclass
class Extraction:
    attributes: dict  # field -> normalised value or None; valid against SCHEMA
    scores: dict = field(default_factory=dict)  # field -> the chosen option's share of the model's choice
    errors: list[str] = field(default_factory=list)  # fields left empty because the model answered badly

    def tags(self) -> list[tuple[str, float]]:
        return [(f"{name}:{value}", self.scores.get(name, 1.0)) for name, value in self.attributes.items() if value]


def extract(title: str, brand: str | None, text: str, chooser, template, config: AttributeConfig = AttributeConfig(),
            cache: AnswerCache | None = None) -> Extraction:
    """One listing's attributes; without a chooser (or with config.ask_model off), the first span of each field."""
    ask_model = config.ask_model and chooser is not None
    text = _EMBEDDED_DATA.sub(" ", text)
    whole = f"{title}. {text}" if text else title
    brand_value = (brand or "").strip()
    result = Extraction(attributes={"brand": brand_value if brand_value.lower() not in PLACEHOLDER_BRANDS else None})
    listing = chooser.cut_listing(text) if chooser is not None else text
    unbranded = re.sub(re.escape(brand_value), " ", whole, flags=re.I) if len(brand_value) > 1 else whole
    for spec in FIELDS:
        spans = spec.find(unbranded if spec.without_brand else whole)
        value = None
        labelled = [s for s in spans if s.labelled]
        if len(labelled) == 1 or (labelled and not ask_model):
            value = labelled[0].value
        elif spans and not ask_model:
            value = spans[0].value
        elif spans:
            options = [s.value for s in spans[: config.max_options]] + [NOT_STATED]
            prompt = template.render(title=title, text=listing, question=spec.question, options=options)
            choice = ask(chooser, cache, template, prompt, options)
            if not choice.ok:
                result.errors.append(f"attribute {spec.name}: {choice.error}")
            elif options[choice.index] != NOT_STATED:
                value = options[choice.index]
                result.scores[spec.name] = choice_share(choice.scores, choice.index)
        result.attributes[spec.name] = value
    # The values come from our own patterns, so a schema failure is a bug: drop the field, say so, go on.
    for error in _VALIDATOR.iter_errors(result.attributes):
        name = error.path[0] if error.path else None
        if name in result.attributes:
            result.errors.append(f"attribute {name}: {result.attributes[name]!r} fails the schema, left empty")
            result.attributes[name] = None
            result.scores.pop(name, None)
    return result
