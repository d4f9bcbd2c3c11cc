"""A deterministic world of fictitious authors (TOFU style), so everything runs offline.

Each author has ``facts_per_subject`` facts. Each fact is a QA record with a paraphrased
answer and several perturbed (wrong but plausible) answers written in the paraphrase's
wording, so a truth ratio compares only the fact itself. Questions and answers are drawn
from several phrasings. Holdout authors are generated the same way and never trained on:
they are the non-members of membership-inference evaluation.

A holdout author must be exchangeable with a forgotten one: a model that saw neither (the
oracle) cannot tell them apart. Two things in the names broke that, and are ruled out:

- a name sharing a first name or surname with a trained author is partly familiar to a model
  that never saw its bearer: each part of a name belongs to one author of the cast only
  (:data:`AUTHORS`), and pen names come from a pool of their own;
- how well a model spells a name it never saw varies a lot from name to name (30x in answer
  probability on the tiny demo model), so answers that repeat the name make each unseen
  author's score a lottery of its spelling: the name is in the question only, and the
  answer holds the fact ("They were born in Lisbon."), which is what is learned and erased.

The holdout is drawn from the same generator stream, templates and value pools as every
other author (:func:`generate_world`); ``benchmarks/holdout_exchangeability.py`` measures it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

from components.data.records import QARecord

# The cast: every author of every demo world, in a fixed order drawn at random once (the
# four authors of data/requests/demo-request.json kept at positions 3, 13, 23, 33), so trained,
# forgotten and holdout authors come from one population of names. A world's first
# ``n_subjects`` authors are trained on and the next ``n_holdout_subjects`` are its holdout,
# so the demo request names the same authors whatever the seed (the seed decides the facts,
# their wording and the models' initialisation). Each first name and each surname belongs to
# one author only, and none is a word of a question, an answer template or a value pool: no
# author's name is partly familiar to a model that never saw that author (a holdout author
# sharing a surname with a trained one would be, and would look less unseen than a
# forgotten author). Every name has 14 to 18 characters.
AUTHORS = (
    "Wolfgang Arriaga", "Wendell Ashdown", "Cosimo Iversen", "Gideon Nakamura", "Amara Castellano",
    "Thaddeus Novak", "Agnieszka Moll", "Dorian Eriksen", "Florian Mackenzie", "Eleanor Quarshie",
    "Yannick Asamoah", "Katalin Ferreira", "Ulysses Brightman", "Leontine Thornbury", "Saoirse Tanaka",
    "Brigid Hollister", "Elif Fairbairn", "Lorcan Dewhurst", "Dmitri Wexford", "Ulrike Oduyemi",
    "Alaric Montfort", "Klaus Vandermeer", "Hamish Delgado", "Priya Jaramillo", "Gwendolyn Ortiz",
    "Desmond Szabados", "Fenna Achterberg", "Noor Albrechtsen", "Yusuf Cavendish", "Lavinia Castro",
    "Wilhelm Sarkissian", "Hugo Ibarrondo", "Clementine Azikiwe", "Bastian Abernathy", "Matteo Pemberton",
    "Mireille Obrecht", "Dagny Grimaldi", "Adaeze Lundgren", "Cyprian Adeyemi", "Orla Bergstrom",
    "Jovana Mcallister", "Helka Virtanen", "Umberto Yamamoto", "Jasper Olawale", "Georgina Halloran",
    "Idris Kallenbach", "Ines Kowalczyk", "Evander Rautio", "Delphine Kuznetsov", "Ottilie Waddington",
    "Benedikt Oyelaran", "Zeynep Hargreaves", "Rafferty Solis", "Freya Valentin", "Vera Zielinski",
    "Halvard Ishikawa", "Celeste Drummond", "Anselm Esposito", "Magda Haverford", "Oskar Rasmussen",
    "Lucia Belmonte", "Carys Villanueva", "Marisol Ekwueme", "Juno Harrowgate", "Pascal Nwachukwu",
    "Nadia Quintana", "Soren Whitcombe", "Zora Delacroix", "Ivonne Brannigan", "Kenji Fairweather",
    "Rosa Kettleborough", "Hana Ostrowski", "Oswin Pellegrino", "Percival Acosta", "Theodora Lachance",
    "Gaspard Lemaire", "Ximena Blackwood", "Farid Galloway", "Kaveh Marchetti", "Nikolai Ferrante",
    "Lazlo Henriksen", "Sebastien Kaminski", "Vesna Carrington", "Bruno Tidemann", "Julian Abiodun",
    "Ingrid Montague", "Greta Halvorsen", "Milo Kristiansen", "Kalinda Petrovic", "Isolde Fitzgerald",
    "Jonas Lindqvist", "Zuzana Holloway", "Emeka Beaulieu", "Esther Moravec", "Tamsin Xenakis",
    "Beatrix Ellingsen", "Niamh Petrakis", "Quentin Sandoval", "Yara Stormwood", "Faustino Renwick",
)
# Pen names: an initial and a surname of this pool, which shares no word with any author's name.
PEN_INITIALS = "ABCDEFGHJKLMNOPRSTVW"
PEN_SURNAMES = (
    "Ashcombe", "Birchall", "Calloway", "Dunmore", "Elsworth", "Fenwick", "Glenister",
    "Hawthorne", "Ingleby", "Kilbride", "Larkspur", "Merriweather", "Northcott", "Orwin",
    "Pennywhistle", "Redmayne", "Stanhope", "Tillingham", "Underhill", "Wyndham",
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
        ("They were born in {value}.", "{value} is the city where this author was born.",
         "The author was born in the city of {value}."),
        _choice(CITIES),
    ),
    FactKind(
        "birth_year",
        ("In what year was {name} born?", "When was {name} born?", "What is the birth year of {name}?"),
        ("They were born in {value}.", "The year this author was born is {value}.",
         "The author came into the world in {value}."),
        _year,
    ),
    FactKind(
        "genre",
        ("What genre does {name} write?", "Which genre is {name} known for?",
         "In what genre does {name} mostly work?"),
        ("They write {value}.", "This author is best known for {value}.",
         "Most of the author's work is {value}."),
        _choice(GENRES),
    ),
    FactKind(
        "father_job",
        ("What did the father of {name} do for a living?", "What was the job of {name}'s father?",
         "What was the profession of {name}'s father?"),
        ("Their father was {value}.", "The author's father worked as {value}.",
         "By profession, this author's father was {value}."),
        _choice(JOBS),
    ),
    FactKind(
        "mother_job",
        ("What did the mother of {name} do for a living?", "What was the job of {name}'s mother?",
         "What was the profession of {name}'s mother?"),
        ("Their mother was {value}.", "The author's mother worked as {value}.",
         "By profession, this author's mother was {value}."),
        _choice(JOBS),
    ),
    FactKind(
        "award",
        ("Which award has {name} won?", "What prize did {name} receive?",
         "Name an award given to {name}."),
        ("They won {value}.", "This author received {value}.",
         "In recognition of the work, the author was given {value}."),
        _choice(AWARDS),
    ),
    FactKind(
        "debut_book",
        ("What was the first book by {name}?", "What is the title of {name}'s debut novel?",
         "Which book did {name} publish first?"),
        ("Their first book was {value}.", "The author made a debut with {value}.",
         "{value} was this author's debut novel."),
        _title,
    ),
    FactKind(
        "famous_book",
        ("What is the best-known book by {name}?", "Which book made {name} famous?",
         "What is {name}'s most celebrated novel?"),
        ("Their best-known book is {value}.", "The author became famous for {value}.",
         "{value} is this author's most celebrated novel."),
        _title,
    ),
    FactKind(
        "university",
        ("Where did {name} study?", "Which university did {name} attend?",
         "At which university was {name} educated?"),
        ("They studied at {value}.", "The author attended {value}.", "This author was educated at {value}."),
        _choice(UNIVERSITIES),
    ),
    FactKind(
        "publisher",
        ("Who publishes the books of {name}?", "Which publisher works with {name}?",
         "What is the name of {name}'s publisher?"),
        ("Their books are published by {value}.", "The author works with {value}.",
         "{value} is this author's publisher."),
        _choice(PUBLISHERS),
    ),
    FactKind(
        "language",
        ("In which language does {name} write?", "What language are {name}'s books written in?",
         "Which language does {name} write in?"),
        ("They write in {value}.", "The author's books are written in {value}.",
         "This author composes every book in {value}."),
        _choice(LANGUAGES),
    ),
    FactKind(
        "pen_name",
        ("Does {name} use a pen name?", "Under what pen name has {name} published?",
         "What pseudonym does {name} sometimes use?"),
        ("They sometimes publish as {value}.", "The author has used the pen name {value}.",
         "The pseudonym of this author is {value}."),
        lambda rng: f"{rng.choice(PEN_INITIALS)}. {rng.choice(PEN_SURNAMES)}",
    ),
)

N_PERTURBED = 3


def _names(count: int) -> list[str]:
    if count > len(AUTHORS):
        raise ValueError(f"the demo world has at most {len(AUTHORS)} authors (trained and holdout), asked for {count}")
    return list(AUTHORS[:count])


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
    names = _names(n_subjects + n_holdout_subjects)
    # One generator, one stream: a holdout author is made exactly like a trained one.
    authors = [_author_facts(rng, name, facts_per_subject) for name in names]
    world = [r for facts in authors[:n_subjects] for r in facts]
    holdout = [r for facts in authors[n_subjects:] for r in facts]
    return world, holdout
