"""The phrasings and seeds a single LoRA is judged on, written before any recipe was tuned, and never a training
caption (each is checked against every caption `loramix faces` can write).

Two sets per attribute: TUNE, which recipe choices may be measured on, and HELD_OUT, measured once the choices
are made. Both vary what the training captions never vary: colours and styles named or not, other attributes
named beside it, word order, a lone word and a long sentence, and the words people type beside the caption
vocabulary (portrait, person, man, woman, drawing). Every word is one token of the toy base's tokenizer
(`check_vocabulary`). Seeds: TUNE_SEEDS for tuning, HELD_OUT_SEEDS (the composition bench's) for the figure.
"""

from __future__ import annotations

TUNE_SEEDS = range(2000, 2032)
HELD_OUT_SEEDS = range(1000, 1128)

TUNE = {
    "mustache": (
        "a man with a mustache",
        "mustache, smiling face, blue background",
        "a cartoon face with a ginger handlebar mustache and curly red hair",
        "portrait of a sad person with a mustache, wearing glasses",
        "a grey mustache",
        "a face on a yellow background with short black hair, a brown pencil mustache and green eyes",
    ),
    "lipstick": (
        "a woman wearing lipstick",
        "lipstick, neutral face, green background",
        "a cartoon face with long blonde hair and purple lipstick",
        "portrait of a smiling person with red lipstick and a mustache",
        "pink lipstick",
        "a face on an orange background with curly brown hair, dark red lipstick and grey eyes",
    ),
    "glasses": (
        "a man wearing glasses",
        "glasses, sad face, grey background",
        "a cartoon face with short red hair and square blue glasses",
        "portrait of a surprised person with sunglasses and lipstick",
        "black glasses",
        "a face on a teal background with long black hair, round brown glasses and blue eyes",
    ),
}

HELD_OUT = {
    "mustache": (
        "a drawing of a face with a black mustache",
        "a surprised man with a grey chevron mustache on a teal background",
        "mustache",
        "a face with long blonde hair, blue eyes and a brown handlebar mustache, wearing red lipstick",
        "picture of a person with a pencil mustache, on an orange background",
        "a bald man with a mustache and round black glasses",
        "the face of a smiling woman with a ginger mustache",
    ),
    "lipstick": (
        "a drawing of a face with red lipstick",
        "a surprised woman wearing dark red lipstick on a blue background",
        "lipstick",
        "a face with short black hair, brown eyes and pink lipstick, with a mustache",
        "picture of a person wearing purple lipstick, on a yellow background",
        "a bald woman with lipstick and square red glasses",
        "the face of a sad man wearing lipstick",
    ),
    "glasses": (
        "a drawing of a face with black glasses",
        "a smiling woman with round red glasses on a green background",
        "glasses",
        "a face with curly grey hair, green eyes and square black glasses, with a mustache",
        "picture of a person wearing sunglasses, on an orange background",
        "a bald man with glasses and pink lipstick",
        "the face of a neutral person wearing blue glasses",
    ),
}


def words(prompts) -> set[str]:
    return {word.strip(",") for prompt in prompts for word in prompt.split()}


def check_vocabulary(tokenizer) -> list[str]:
    """The words of every phrasing that the toy tokenizer splits (a word the base never saw): none, we hope."""
    every = set().union(*(words(prompts) for table in (TUNE, HELD_OUT) for prompts in table.values()))
    return sorted(word for word in every if len(tokenizer.tokenize(word)) != 1)


def check_not_training_captions(faces: int = 20_000) -> list[str]:
    """Phrasings that are a caption the generator writes (for any of the first `faces` seeds, any attributes)."""
    from loramix.toy.face_spec import caption, sample_face

    every = {prompt for table in (TUNE, HELD_OUT) for prompts in table.values() for prompt in prompts}
    captions = {caption(sample_face(seed, *flags)) for seed in range(faces)
                for flags in ((True, False, False), (False, True, False), (False, False, True))}
    return sorted(every & captions)
