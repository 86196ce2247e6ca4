"""A small built-in set of plain English sentences, for when a text tower needs text and the user
gave none: checking an export against its simulation, or calibrating a text tower from images alone.

The sentences were written for vitq: short image descriptions of the kind CLIP-style models are
trained on (objects, animals, people, scenes), and prompt-style phrases ("a photo of a ...").
"""

from __future__ import annotations

SENTENCES = (
    "a photo of a dog.",
    "a photo of a cat sleeping on a sofa.",
    "a man riding a bicycle down a city street.",
    "two children playing in the snow in front of a red house.",
    "a blurry photo of a truck.",
    "a close-up photo of a bird sitting on a wire.",
    "a plate of food on a wooden table.",
    "an aeroplane flying over the clouds.",
    "a small boat on a calm lake at sunset.",
    "a woman holding an umbrella in the rain.",
    "a black and white photo of an old car.",
    "a group of people walking on the beach.",
    "a horse standing in a green field.",
    "a frog on a leaf.",
    "a deer in the forest.",
    "a ship in the harbour.",
    "a bright photo of a fire truck.",
    "a cropped photo of a sports car.",
    "a painting of a mountain landscape.",
    "a dog catching a frisbee in the park.",
    "a cup of coffee next to a laptop.",
    "a bowl of fruit on the kitchen counter.",
    "a child reading a book under a tree.",
    "a street at night with cars and lights.",
    "a bridge over a river.",
    "a person skiing down a snowy slope.",
    "a train arriving at the station.",
    "a pair of shoes on the floor.",
    "a cat looking out of the window.",
    "a jellyfish in dark water.",
    "a pizza with cheese and tomatoes.",
    "an old church with a tall tower.",
    "a low resolution photo of a goldfish.",
    "a rendering of a chair.",
    "a drawing of a butterfly.",
    "a toy robot on a desk.",
    "a man playing the guitar on stage.",
    "a girl jumping into a swimming pool.",
    "a bus parked by the road.",
    "a field of yellow flowers.",
    "a snake on the sand.",
    "a lighthouse on a rocky coast.",
    "a basket of bread.",
    "a bear walking through tall grass.",
    "a motorcycle in a garage.",
    "a city skyline seen from the water.",
    "a tennis player hitting the ball.",
    "a bright photo of a lemon.",
)


def sentences(n: int | None = None) -> list[str]:
    """The first ``n`` built-in sentences (all of them by default), cycling when ``n`` is larger."""
    if n is None:
        return list(SENTENCES)
    return [SENTENCES[i % len(SENTENCES)] for i in range(n)]


def read_texts(path) -> list[str]:
    """The user's own sentences: a text file with one sentence a line, or a CSV with a ``caption``
    (or ``text``) column; blank lines are skipped."""
    import csv
    from pathlib import Path

    from ..errors import DataError

    path = Path(path)
    if not path.is_file():
        raise DataError(f"text file not found: {path}", hint="give a file with one sentence a line, or a CSV with a caption column")
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read {path} as UTF-8 text: {e}", hint="give a plain-text file, one sentence a line") from None
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(raw.splitlines()))
        column = next((c for c in ("caption", "text", "sentence") if rows and c in rows[0]), None)
        if column is None:
            raise DataError(f"{path} has no caption, text or sentence column", hint="name the column of sentences 'caption'")
        texts = [r[column].strip() for r in rows if (r.get(column) or "").strip()]
    else:
        texts = [line.strip() for line in raw.splitlines() if line.strip()]
    if not texts:
        raise DataError(f"{path} holds no sentences", hint="write one sentence a line")
    return texts
