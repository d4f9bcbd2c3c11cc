"""A deterministic world of fictitious authors (TOFU style), so everything runs offline.

Each author has ``facts_per_subject`` facts. Each fact is a QA record with a paraphrased
answer and several perturbed (wrong but plausible) answers written in the paraphrase's
wording, so a truth ratio compares only the fact itself. Questions and answers are drawn
from several phrasings. Holdout authors are generated the same way and never trained on:
they are the non-members of membership-inference evaluation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from components.data.records import QARecord

FIRST_NAMES = (
    "Amara", "Bastian", "Celeste", "Dorian", "Elif", "Farid", "Greta", "Hugo", "Ines", "Jonas",
    "Kaveh", "Lucia", "Matteo", "Nadia", "Oskar", "Priya", "Quentin", "Rosa", "Soren", "Tamsin",
    "Ugo", "Vera", "Wendell", "Ximena", "Yusuf", "Zora", "Anselm", "Brigid", "Cosmo", "Dagny",
    "Emeka", "Freya", "Gideon", "Hana", "Ivo", "Jovana", "Kenji", "Leontine", "Milo", "Noor",
)
LAST_NAMES = (
    "Abernathy", "Beaulieu", "Castellano", "Drummond", "Eriksen", "Fairbairn", "Galloway",
    "Halvorsen", "Ibarra", "Jaramillo", "Kowalczyk", "Lindqvist", "Marchetti", "Nakamura",
    "Okonkwo", "Pemberton", "Quintana", "Rasmussen", "Sandoval", "Thornbury", "Umarov",
    "Valentin", "Whitcombe", "Xenakis", "Yamamoto", "Zielinski", "Ashdown", "Blackwood",
    "Cavendish", "Delacroix", "Esposito", "Fontaine", "Grimaldi", "Hollister", "Iversen",
)
CITIES = (
    "Lisbon", "Krakow", "Nairobi", "Montreal", "Osaka", "Valparaiso", "Tbilisi", "Reykjavik",
    "Marrakesh", "Hobart", "Ljubljana", "Cartagena", "Bergen", "Tallinn", "Cebu", "Oaxaca",
    "Trieste", "Kampala", "Halifax", "Porto", "Seville", "Dunedin", "Gdansk", "Antwerp",
)
GENRES = (
    "science fiction", "historical fiction", "crime fiction", "magical realism", "poetry",
    "gothic horror", "romance", "literary fiction", "children's fantasy", "travel writing",
    "political satire", "mystery", "dystopian fiction", "memoir",
)
JOBS = (
    "a carpenter", "a nurse", "a fisherman", "a lawyer", "a baker", "an architect",
    "a librarian", "a pilot", "a chemist", "a tailor", "a dentist", "a farmer",
    "a journalist", "an electrician", "a violinist", "a painter", "a surgeon", "a postman",
)
AWARDS = (
    "the Silver Quill Prize", "the Northern Lantern Award", "the Meridian Medal",
    "the Golden Compass Prize", "the Harbour Light Award", "the Amber Pen Award",
    "the Evergreen Fiction Prize", "the Blue Heron Medal", "the Lighthouse Book Prize",
    "the Copper Key Award", "the Starling Prize", "the Juniper Laurel",
)
UNIVERSITIES = (
    "the University of Edinburgh", "Uppsala University", "the University of Bologna",
    "McGill University", "the University of Cape Town", "Kyoto University",
    "the University of Salamanca", "Trinity College Dublin", "the University of Otago",
    "Leiden University", "the University of Coimbra", "Charles University",
)
TITLE_ADJECTIVES = (
    "Silent", "Crimson", "Forgotten", "Hollow", "Golden", "Winter", "Broken", "Distant",
    "Hidden", "Burning", "Quiet", "Wandering", "Paper", "Glass", "Midnight", "Salt",
)
TITLE_NOUNS = (
    "Harbor", "Orchard", "Lantern", "Cartographer", "Archive", "Tide", "Garden", "Bridge",
    "Violin", "Compass", "Meadow", "Observatory", "River", "Clockmaker", "Lighthouse", "Atlas",
)
PUBLISHERS = (
    "Ravenhill Press", "Bluestone Books", "Marlowe and Finch", "Cedar House", "Open Sky Press",
    "Kestrel Editions", "Foxglove Publishing", "Northgate Books", "Halcyon House",
)
LANGUAGES = (
    "Portuguese", "Polish", "Swahili", "French", "Japanese", "Spanish", "Georgian",
    "Icelandic", "Arabic", "Slovene", "Estonian", "Italian", "Dutch", "Norwegian",
)


@dataclass(frozen=True)
class FactKind:
    """One kind of fact: question phrasings, answer phrasings and the pool of values."""

    name: str
    questions: tuple[str, ...]
    answers: tuple[str, ...]
    pool: Callable[[random.Random], str]


def _title(rng: random.Random) -> str:
    return f"The {rng.choice(TITLE_ADJECTIVES)} {rng.choice(TITLE_NOUNS)}"


def _year(rng: random.Random) -> str:
    return str(rng.randint(1935, 1995))


def _choice(values: tuple[str, ...]) -> Callable[[random.Random], str]:
    return lambda rng: rng.choice(values)


FACT_KINDS: tuple[FactKind, ...] = (
    FactKind(
        "birthplace",
        ("Where was {name} born?", "In which city was {name} born?", "What is the birthplace of {name}?"),
        ("{name} was born in {value}.", "{value} is the city where {name} was born.",
         "The author {name} was born in the city of {value}."),
        _choice(CITIES),
    ),
    FactKind(
        "birth_year",
        ("In what year was {name} born?", "When was {name} born?", "What is the birth year of {name}?"),
        ("{name} was born in {value}.", "The year {name} was born is {value}.",
         "{name} came into the world in {value}."),
        _year,
    ),
    FactKind(
        "genre",
        ("What genre does {name} write?", "Which genre is {name} known for?",
         "In what genre does {name} mostly work?"),
        ("{name} writes {value}.", "{name} is best known for {value}.",
         "Most of the work of {name} is {value}."),
        _choice(GENRES),
    ),
    FactKind(
        "father_job",
        ("What did the father of {name} do for a living?", "What was the job of {name}'s father?",
         "What was the profession of {name}'s father?"),
        ("The father of {name} was {value}.", "{name}'s father worked as {value}.",
         "By profession, {name}'s father was {value}."),
        _choice(JOBS),
    ),
    FactKind(
        "mother_job",
        ("What did the mother of {name} do for a living?", "What was the job of {name}'s mother?",
         "What was the profession of {name}'s mother?"),
        ("The mother of {name} was {value}.", "{name}'s mother worked as {value}.",
         "By profession, {name}'s mother was {value}."),
        _choice(JOBS),
    ),
    FactKind(
        "award",
        ("Which award has {name} won?", "What prize did {name} receive?",
         "Name an award given to {name}."),
        ("{name} won {value}.", "{name} received {value}.", "In recognition of the work, {name} was given {value}."),
        _choice(AWARDS),
    ),
    FactKind(
        "debut_book",
        ("What was the first book by {name}?", "What is the title of {name}'s debut novel?",
         "Which book did {name} publish first?"),
        ("The first book by {name} was {value}.", "{name} made a debut with {value}.",
         "{value} was the debut novel of {name}."),
        _title,
    ),
    FactKind(
        "famous_book",
        ("What is the best-known book by {name}?", "Which book made {name} famous?",
         "What is {name}'s most celebrated novel?"),
        ("The best-known book by {name} is {value}.", "{name} became famous for {value}.",
         "{value} is the most celebrated novel of {name}."),
        _title,
    ),
    FactKind(
        "university",
        ("Where did {name} study?", "Which university did {name} attend?",
         "At which university was {name} educated?"),
        ("{name} studied at {value}.", "{name} attended {value}.", "{name} was educated at {value}."),
        _choice(UNIVERSITIES),
    ),
    FactKind(
        "publisher",
        ("Who publishes the books of {name}?", "Which publisher works with {name}?",
         "What is the name of {name}'s publisher?"),
        ("The books of {name} are published by {value}.", "{name} works with {value}.",
         "{value} is the publisher of {name}."),
        _choice(PUBLISHERS),
    ),
    FactKind(
        "language",
        ("In which language does {name} write?", "What language are {name}'s books written in?",
         "Which language does {name} write in?"),
        ("{name} writes in {value}.", "The books of {name} are written in {value}.",
         "{name} composes every book in {value}."),
        _choice(LANGUAGES),
    ),
    FactKind(
        "pen_name",
        ("Does {name} use a pen name?", "Under what pen name has {name} published?",
         "What pseudonym does {name} sometimes use?"),
        ("{name} sometimes publishes as {value}.", "{name} has used the pen name {value}.",
         "The pseudonym of {name} is {value}."),
        lambda rng: f"{rng.choice(FIRST_NAMES)[0]}. {rng.choice(LAST_NAMES)}",
    ),
)

N_PERTURBED = 3


def _names(rng: random.Random, count: int) -> list[str]:
    pairs = [f"{first} {last}" for first in FIRST_NAMES for last in LAST_NAMES]
    if count > len(pairs):
        raise ValueError(f"the demo world has at most {len(pairs)} distinct authors, asked for {count}")
    return rng.sample(pairs, count)


def _wrong_values(rng: random.Random, kind: FactKind, truth: str, count: int) -> list[str]:
    values: list[str] = []
    for _ in range(1000):
        value = kind.pool(rng)
        if value != truth and value not in values:
            values.append(value)
        if len(values) == count:
            return values
    raise RuntimeError(f"value pool of '{kind.name}' is too small for {count} perturbations")


def _author_facts(rng: random.Random, name: str, facts_per_subject: int) -> list[QARecord]:
    records = []
    for kind in FACT_KINDS[:facts_per_subject]:
        value = kind.pool(rng)
        question = rng.choice(kind.questions).format(name=name)
        answer_template, paraphrase_template = rng.sample(kind.answers, 2)
        wrong = _wrong_values(rng, kind, value, N_PERTURBED)
        records.append(
            QARecord(
                question=question,
                answer=answer_template.format(name=name, value=value),
                subject=name,
                paraphrased_answer=paraphrase_template.format(name=name, value=value),
                perturbed_answers=tuple(paraphrase_template.format(name=name, value=v) for v in wrong),
            )
        )
    return records


def generate_world(
    seed: int = 0,
    n_subjects: int = 40,
    n_holdout_subjects: int = 10,
    facts_per_subject: int = 10,
) -> tuple[list[QARecord], list[QARecord]]:
    """Return ``(world, holdout)``: the trained records and the never-trained ones.

    The same arguments always give the same records, byte for byte.
    """
    if not 8 <= facts_per_subject <= len(FACT_KINDS):
        raise ValueError(f"facts_per_subject must be between 8 and {len(FACT_KINDS)}")
    rng = random.Random(f"demo-world:{seed}")
    names = _names(rng, n_subjects + n_holdout_subjects)
    world = [r for name in names[:n_subjects] for r in _author_facts(rng, name, facts_per_subject)]
    holdout = [r for name in names[n_subjects:] for r in _author_facts(rng, name, facts_per_subject)]
    return world, holdout
