"""The phrasings and seeds a single LoRA is judged on, written before any recipe was tuned, and never a training
caption (each is checked against every caption `loramix faces` can write).

Three sets per attribute: TUNE, which recipe choices may be measured on; HELD_OUT, measured once the choices
were made; and FRESH, written before the recipes were tuned a second time, on HELD_OUT's per-phrasing figures
as well (HELD_OUT is then a tuning set too, and FRESH the one the singles' figure is read from); FINAL, written
before the mustache recipe was chosen a third time, with FRESH's figures in hand. All vary what
the training captions never vary: colours and styles named or not, other attributes named beside it, word
order, a lone word and a long sentence, and the words people type beside the caption vocabulary (portrait,
person, man, woman, drawing, photo). Every word is one token of the toy base's tokenizer (`check_vocabulary`).
Seeds: TUNE_SEEDS and HELD_OUT_SEEDS (the composition bench's) for tuning, FRESH_SEEDS and then FINAL_SEEDS for
the figure.
"""

from __future__ import annotations

TUNE_SEEDS = range(2000, 2032)
HELD_OUT_SEEDS = range(1000, 1128)
FRESH_SEEDS = range(5000, 5128)
FINAL_SEEDS = range(7000, 7128)
LAST_SEEDS = range(9000, 9128)
NEXT_SEEDS = range(11000, 11128)
SIXTH_SEEDS = range(13000, 13128)
SEVENTH_SEEDS = range(15000, 15128)
EIGHTH_SEEDS = range(17000, 17128)
NINTH_SEEDS = range(19000, 19128)
TENTH_SEEDS = range(21000, 21128)
ELEVENTH_SEEDS = range(23000, 23128)
TWELFTH_SEEDS = range(25000, 25128)
THIRTEENTH_SEEDS = range(27000, 27128)
FOURTEENTH_SEEDS = range(29000, 29128)
FIFTEENTH_SEEDS = range(31000, 31128)
SIXTEENTH_SEEDS = range(33000, 33128)
SEVENTEENTH_SEEDS = range(35000, 35128)
EIGHTEENTH_SEEDS = range(37000, 37128)
NINETEENTH_SEEDS = range(39000, 39128)
TWENTIETH_SEEDS = range(41000, 41128)
TWENTY_FIRST_SEEDS = range(43000, 43128)

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

FRESH = {
    "mustache": (
        "a photo of a man with a dark brown mustache",
        "mustache, surprised face, orange background, short grey hair",
        "a woman with curly black hair and a mustache",
        "a person with a handlebar mustache and pink lipstick on a green background",
        "portrait, black mustache",
        "a drawing of a neutral face with blue eyes, glasses and a grey pencil mustache",
        "a smiling person with red hair in a bun and a mustache on a grey background",
    ),
    "lipstick": (
        "a photo of a woman with dark red lipstick",
        "lipstick, smiling face, teal background, long black hair",
        "a man with short blonde hair and lipstick",
        "a person with pink lipstick and round glasses on a grey background",
        "portrait, purple lipstick",
        "a drawing of a surprised face with brown eyes, a mustache and dark red lipstick",
        "a sad person with curly red hair and lipstick on a teal background",
    ),
    "glasses": (
        "a photo of a man with dark black glasses",
        "glasses, neutral face, yellow background, curly blonde hair",
        "a woman with long brown hair and glasses",
        "a person with round glasses and a black mustache on a blue background",
        "portrait, red glasses",
        "a drawing of a sad face with green eyes, lipstick and square grey glasses",
        "a surprised person with grey hair in a bun and sunglasses",
    ),
}

# Phrasings of the mustache and lipstick together, for tuning how they compose (bench_methods.py --set tune),
# written before the regional start was tuned; the composition's figure is read from bench_methods.PHRASINGS.
TUNE_PAIR = (
    "a man with a mustache wearing lipstick",
    "mustache and lipstick, neutral face, blue background",
    "a cartoon face with a black mustache and red lipstick",
)

# Fresh phrasings of each composed set, with FRESH_SEEDS: written after the regional start was chosen on TUNE_PAIR
# and checked on bench_methods.PHRASINGS (which that made a tuning set too), so the figure read here was tuned on
# nothing.
FRESH_SETS = {
    ("mustache", "lipstick"): (
        "a photo of a person with a brown mustache and pink lipstick",
        "lipstick and a mustache, surprised face, green background",
        "a woman with short red hair wearing dark red lipstick and a black mustache",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a photo of a person with a brown mustache, pink lipstick and glasses",
        "glasses, lipstick and a mustache, surprised face, green background",
        "a woman with short red hair wearing dark red lipstick, round glasses and a black mustache",
    ),
}

# The singles' last set, with FINAL_SEEDS: written before the mustache recipe was changed a second time (72 faces,
# plain loss, chosen on TUNE_PAIR and HELD_OUT composed), after FRESH had measured that recipe once.
FINAL = {
    "mustache": (
        "a picture of a bald woman with a ginger mustache",
        "a neutral face, brown eyes, a chevron mustache",
        "mustache on a man with long grey hair in a drawing",
        "a sad person wearing purple lipstick and sunglasses, with a black mustache",
        "mustache",
        "a photo of a smiling man with short blonde hair, green eyes and a brown handlebar mustache, teal background",
        "portrait of a surprised person with a mustache",
    ),
    "lipstick": (
        "a picture of a bald man with purple lipstick",
        "a neutral face, green eyes, pink lipstick",
        "lipstick on a woman with short grey hair in a drawing",
        "a sad person with a ginger mustache and sunglasses, wearing red lipstick",
        "lipstick",
        "a photo of a smiling woman with long blonde hair, blue eyes and dark red lipstick on a yellow background",
        "portrait of a surprised person wearing lipstick",
    ),
    "glasses": (
        "a picture of a bald woman with brown glasses",
        "a neutral face, grey eyes, square glasses",
        "glasses on a man with curly grey hair in a drawing",
        "a sad person with pink lipstick and a black mustache, wearing sunglasses",
        "glasses",
        "a photo of a smiling man with short red hair, brown eyes and round black glasses on an orange background",
        "portrait of a surprised person wearing glasses",
    ),
}

# The singles' next set, with NEXT_SEEDS: written before the recipes' targets were tuned a fourth time (on TUNE and
# FINAL), with FINAL's figures in hand.
NEXT = {
    "mustache": (
        "a drawing of a neutral woman with long red hair and a grey mustache",
        "mustache, surprised face, teal background",
        "a smiling person with blue eyes and a black chevron mustache",
        "a bald man wearing sunglasses and pink lipstick, with a brown mustache",
        "a ginger mustache",
        "portrait of a sad man on a green background with curly black hair, grey eyes and a mustache",
        "photo of a person with a handlebar mustache",
    ),
    "lipstick": (
        "a drawing of a neutral man with long red hair and purple lipstick",
        "lipstick, surprised face, teal background",
        "a smiling person with blue eyes and red lipstick",
        "a bald woman wearing sunglasses and a grey mustache, with pink lipstick",
        "dark red lipstick",
        "portrait of a sad woman on a green background with curly black hair, grey eyes and lipstick",
        "photo of a person with lipstick",
    ),
    "glasses": (
        "a drawing of a neutral woman with long red hair and round glasses",
        "glasses, surprised face, teal background",
        "a smiling person with blue eyes and black glasses",
        "a bald man with pink lipstick and a brown mustache, wearing glasses",
        "square sunglasses",
        "portrait of a sad man on a green background with curly black hair, grey eyes and glasses",
        "photo of a person with sunglasses",
    ),
}

# The singles' seventh set, with SEVENTH_SEEDS: written before the recipes learned from regularization images (on
# TUNE, FINAL and NEXT), with NEXT's figures in hand.
SEVENTH = {
    "mustache": (
        "a photo of a sad woman with short black hair and a grey handlebar mustache, purple background",
        "mustache, smiling man",
        "a neutral person with glasses, red lipstick and a ginger mustache",
        "portrait of a bald person with brown eyes and a pencil mustache on a yellow background",
        "a black chevron mustache in a drawing",
        "a surprised woman with curly blonde hair and a mustache",
        "mustache on a face",
    ),
    "lipstick": (
        "a photo of a sad man with short black hair and pink lipstick, purple background",
        "lipstick, smiling woman",
        "a neutral person with glasses, a black mustache and purple lipstick",
        "portrait of a bald person with brown eyes and dark red lipstick on a yellow background",
        "red lipstick in a drawing",
        "a surprised man with curly blonde hair and lipstick",
        "lipstick on a face",
    ),
    "glasses": (
        "a photo of a sad woman with short black hair and square glasses, purple background",
        "sunglasses, smiling man",
        "a neutral person with red lipstick, a grey mustache and round glasses",
        "portrait of a bald person with brown eyes and black sunglasses on a yellow background",
        "glasses in a drawing",
        "a surprised woman with curly blonde hair and glasses",
        "glasses on a face",
    ),
}

# The singles' eighth set, with EIGHTH_SEEDS: written after SEVENTH was read and the mustache's caption dropout
# was taken back on its figures, for the figure of what is then shipped.
EIGHTH = {
    "mustache": (
        "a drawing of a smiling man with short red hair, blue eyes and a black handlebar mustache",
        "a grey mustache, sad face",
        "portrait of a person wearing sunglasses with a chevron mustache and pink lipstick",
        "a photo of a neutral woman with long blonde hair and a mustache, orange background",
        "a face, a mustache",
        "a surprised bald man with a brown pencil mustache on a teal background",
        "mustache in a photo",
    ),
    "lipstick": (
        "a drawing of a smiling woman with short red hair, blue eyes and purple lipstick",
        "pink lipstick, sad face",
        "portrait of a person wearing sunglasses with a mustache and red lipstick",
        "a photo of a neutral man with long blonde hair and lipstick, orange background",
        "a face, lipstick",
        "a surprised bald woman with dark red lipstick on a teal background",
        "lipstick in a photo",
    ),
    "glasses": (
        "a drawing of a smiling man with short red hair, blue eyes and round black glasses",
        "square glasses, sad face",
        "portrait of a person with a chevron mustache, pink lipstick and sunglasses",
        "a photo of a neutral woman with long blonde hair and glasses, orange background",
        "a face, glasses",
        "a surprised bald man with brown glasses on a teal background",
        "sunglasses in a photo",
    ),
}

# The singles' ninth set, with NINTH_SEEDS: written after EIGHTH was read, before a round on which UNet layers
# the mustache trains (every attention layer, or the cross-attention's alone).
NINTH = {
    "mustache": (
        "a photo of a surprised person with curly grey hair and a ginger chevron mustache, green background",
        "mustache, neutral woman",
        "a smiling man with round glasses, purple lipstick and a black pencil mustache",
        "portrait of a sad bald woman with a handlebar mustache",
        "a brown mustache in a drawing",
        "a person with long red hair, grey eyes and a mustache on a blue background",
        "a man, mustache",
    ),
    "lipstick": (
        "a photo of a surprised person with curly grey hair and purple lipstick, green background",
        "lipstick, neutral man",
        "a smiling woman with round glasses, a black pencil mustache and pink lipstick",
        "portrait of a sad bald man with dark red lipstick",
        "purple lipstick in a drawing",
        "a person with long red hair, grey eyes and lipstick on a blue background",
        "a woman, lipstick",
    ),
    "glasses": (
        "a photo of a surprised person with curly grey hair and round glasses, green background",
        "glasses, neutral woman",
        "a smiling man with purple lipstick, a black pencil mustache and square glasses",
        "portrait of a sad bald woman with sunglasses",
        "black glasses in a drawing",
        "a person with long red hair, grey eyes and glasses on a blue background",
        "a man, sunglasses",
    ),
}

# The singles' tenth set, with TENTH_SEEDS: written after NINTH was read, before any further tuning, for the
# figure after it.
TENTH = {
    "mustache": (
        "a drawing of a sad man with curly brown hair and a grey handlebar mustache, yellow background",
        "mustache, smiling person",
        "a surprised woman with square glasses, dark red lipstick and a brown chevron mustache",
        "portrait of a neutral bald man with green eyes and a mustache",
        "a ginger pencil mustache on a face",
        "a photo of a person with short blonde hair and a black mustache on a grey background",
        "a woman, a mustache",
    ),
    "lipstick": (
        "a drawing of a sad woman with curly brown hair and pink lipstick, yellow background",
        "lipstick, smiling person",
        "a surprised man with square glasses, a brown chevron mustache and dark red lipstick",
        "portrait of a neutral bald woman with green eyes and lipstick",
        "purple lipstick on a face",
        "a photo of a person with short blonde hair and red lipstick on a grey background",
        "a man, lipstick",
    ),
    "glasses": (
        "a drawing of a sad man with curly brown hair and round glasses, yellow background",
        "glasses, smiling person",
        "a surprised woman with dark red lipstick, a brown chevron mustache and sunglasses",
        "portrait of a neutral bald man with green eyes and glasses",
        "square black glasses on a face",
        "a photo of a person with short blonde hair and blue glasses on a grey background",
        "a woman, glasses",
    ),
}

# The singles' eleventh set, with ELEVENTH_SEEDS: written while TENTH was read for the rank-16 mustache, before its
# figures were seen and before any further tuning, for the figure of the next round.
ELEVENTH = {
    "mustache": (
        "a sad woman with short black hair and a ginger handlebar mustache on a teal background",
        "photo, mustache, neutral face",
        "a smiling man wearing round glasses and purple lipstick, with a grey pencil mustache",
        "a drawing of a bald person with brown eyes and a mustache, orange background",
        "a black chevron mustache",
        "portrait of a surprised person with long blonde hair and a brown mustache",
        "a mustache on a man",
    ),
    "lipstick": (
        "a sad man with short black hair and purple lipstick on a teal background",
        "photo, lipstick, neutral face",
        "a smiling woman wearing round glasses and a grey pencil mustache, with dark red lipstick",
        "a drawing of a bald person with brown eyes and lipstick, orange background",
        "a face, pink lipstick",
        "portrait of a surprised person with long blonde hair and red lipstick",
        "a woman with lipstick",
    ),
    "glasses": (
        "a sad woman with short black hair and square glasses on a teal background",
        "photo, glasses, neutral face",
        "a smiling man wearing purple lipstick and a grey pencil mustache, with sunglasses",
        "a drawing of a bald person with brown eyes and glasses, orange background",
        "round blue glasses",
        "portrait of a surprised person with long blonde hair and black glasses",
        "a man with glasses",
    ),
}

# The singles' twelfth set, with TWELFTH_SEEDS: written before ELEVENTH was read, at the start of a round on the
# mustache's training faces (their mustache colours), for the figure of the round after.
TWELFTH = {
    "mustache": (
        "a smiling bald woman with grey eyes and a brown handlebar mustache on a green background",
        "neutral face, mustache, photo",
        "a man with sunglasses, pink lipstick and a black pencil mustache",
        "a drawing of a surprised person with curly red hair and a mustache",
        "a grey chevron mustache on a woman",
        "portrait of a sad face with long brown hair, blue eyes and a ginger mustache, teal background",
        "mustache, man",
    ),
    "lipstick": (
        "a smiling bald man with grey eyes and dark red lipstick on a green background",
        "neutral face, lipstick, photo",
        "a woman with sunglasses, a black pencil mustache and purple lipstick",
        "a drawing of a surprised person with curly red hair and lipstick",
        "red lipstick on a man",
        "portrait of a sad face with long brown hair, blue eyes and pink lipstick, teal background",
        "lipstick, woman",
    ),
    "glasses": (
        "a smiling bald woman with grey eyes and round brown glasses on a green background",
        "neutral face, glasses, photo",
        "a man with pink lipstick, a black pencil mustache and square glasses",
        "a drawing of a surprised person with curly red hair and glasses",
        "sunglasses on a woman",
        "portrait of a sad face with long brown hair, blue eyes and red glasses, teal background",
        "glasses, man",
    ),
}

# The singles' thirteenth set, with THIRTEENTH_SEEDS: written before TWELFTH was read, at the start of a round on
# what the mustache's training does beside its faces (an average of its weights, dropout, caption variety).
THIRTEENTH = {
    "mustache": (
        "a neutral bald man with green eyes and a grey chevron mustache on a yellow background",
        "mustache, sad face, drawing",
        "a woman with round glasses, red lipstick and a brown handlebar mustache",
        "a photo of a smiling person with long black hair and a mustache",
        "a ginger pencil mustache on a man",
        "portrait of a surprised face with short blonde hair, brown eyes and a black mustache, orange background",
        "woman, mustache",
    ),
    "lipstick": (
        "a neutral bald woman with green eyes and pink lipstick on a yellow background",
        "lipstick, sad face, drawing",
        "a man with round glasses, a grey chevron mustache and red lipstick",
        "a photo of a smiling person with long black hair and lipstick",
        "dark red lipstick on a woman",
        "portrait of a surprised face with short blonde hair, brown eyes and purple lipstick, orange background",
        "man, lipstick",
    ),
    "glasses": (
        "a neutral bald man with green eyes and square black glasses on a yellow background",
        "glasses, sad face, drawing",
        "a woman with red lipstick, a brown handlebar mustache and round glasses",
        "a photo of a smiling person with long black hair and glasses",
        "round red glasses on a man",
        "portrait of a surprised face with short blonde hair, brown eyes and sunglasses, orange background",
        "woman, glasses",
    ),
}

# The singles' fourteenth set, with FOURTEENTH_SEEDS: written before THIRTEENTH was read, at the start of a round on
# the lipstick under the mustache (its start, its training) and the mustache's captions.
FOURTEENTH = {
    "mustache": (
        "a smiling woman with curly red hair, blue eyes and a brown pencil mustache on a grey background",
        "drawing of a bald man, mustache",
        "a person wearing square glasses and pink lipstick, with a grey handlebar mustache",
        "photo, a neutral face with a black mustache",
        "a chevron mustache on a sad woman",
        "portrait of a man with long grey hair, green eyes and a ginger mustache, blue background",
        "face, mustache",
    ),
    "lipstick": (
        "a smiling man with curly red hair, blue eyes and purple lipstick on a grey background",
        "drawing of a bald woman, lipstick",
        "a person wearing square glasses and a black pencil mustache, with dark red lipstick",
        "photo, a neutral face with pink lipstick",
        "red lipstick on a sad man",
        "portrait of a woman with long grey hair, green eyes and lipstick, blue background",
        "face, lipstick",
    ),
    "glasses": (
        "a smiling woman with curly red hair, blue eyes and round brown glasses on a grey background",
        "drawing of a bald man, glasses",
        "a person with pink lipstick and a grey handlebar mustache, wearing sunglasses",
        "photo, a neutral face with black glasses",
        "square glasses on a sad woman",
        "portrait of a man with long grey hair, green eyes and red glasses, blue background",
        "face, glasses",
    ),
}

# Written before the round that followed FOURTEENTH (the mustache's nouns, then the regions' masks), with FOURTEENTH's
# figures in hand and nothing tuned on these.
FIFTEENTH = {
    "mustache": (
        "a surprised man with short black hair, brown eyes and a grey chevron mustache on an orange background",
        "picture of a woman with a bun, mustache",
        "a person with red lipstick and round glasses and a black handlebar mustache",
        "cartoon, a sad face with a ginger pencil mustache",
        "a brown mustache on a smiling person",
        "portrait of a woman with short blonde hair, grey eyes and a black mustache, green background",
        "mustache, face",
    ),
    "lipstick": (
        "a surprised woman with short black hair, brown eyes and pink lipstick on an orange background",
        "picture of a man with a bun, lipstick",
        "a person with a black chevron mustache and round glasses and purple lipstick",
        "cartoon, a sad face with dark red lipstick",
        "red lipstick on a smiling person",
        "portrait of a man with short blonde hair, grey eyes and lipstick, green background",
        "lipstick, face",
    ),
    "glasses": (
        "a surprised woman with short black hair, brown eyes and round black glasses on an orange background",
        "picture of a man with a bun, glasses",
        "a person with a grey pencil mustache and pink lipstick and square glasses",
        "cartoon, a sad face with sunglasses",
        "red glasses on a smiling person",
        "portrait of a woman with short blonde hair, grey eyes and brown glasses, green background",
        "glasses, face",
    ),
}

# Written before the round that followed FIFTEENTH (the triple's faces under the regions), with FIFTEENTH's figures in
# hand and nothing tuned on these.
SIXTEENTH = {
    "mustache": (
        "a neutral woman with long black hair, blue eyes and a ginger handlebar mustache on a grey background",
        "drawing of a surprised man, mustache",
        "a person with round glasses and purple lipstick and a brown chevron mustache",
        "photo, a smiling face with a black pencil mustache",
        "a grey mustache on a sad woman",
        "portrait of a person with curly blonde hair, brown eyes and a mustache, orange background",
        "mustache",
    ),
    "lipstick": (
        "a neutral man with long black hair, blue eyes and red lipstick on a grey background",
        "drawing of a surprised woman, lipstick",
        "a person with square glasses and a ginger pencil mustache and pink lipstick",
        "photo, a smiling face with purple lipstick",
        "dark red lipstick on a sad person",
        "portrait of a woman with curly blonde hair, brown eyes and lipstick, orange background",
        "lipstick",
    ),
    "glasses": (
        "a neutral man with long black hair, blue eyes and square red glasses on a grey background",
        "drawing of a surprised woman, glasses",
        "a person with a brown handlebar mustache and dark red lipstick and round glasses",
        "photo, a smiling face with sunglasses",
        "black glasses on a sad man",
        "portrait of a man with curly blonde hair, brown eyes and glasses, orange background",
        "glasses",
    ),
}

SEVENTEENTH = {
    "mustache": (
        "a smiling man with short blonde hair, grey eyes and a brown pencil mustache on a green background",
        "cartoon of a sad woman, mustache",
        "a person with dark red lipstick and sunglasses and a ginger chevron mustache",
        "picture, a neutral face with a grey handlebar mustache",
        "a black mustache on a surprised man",
        "portrait of a woman with a bun, blue eyes and a mustache, red background",
        "person, mustache",
    ),
    "lipstick": (
        "a smiling woman with short blonde hair, grey eyes and purple lipstick on a green background",
        "cartoon of a sad man, lipstick",
        "a person with a brown handlebar mustache and sunglasses and red lipstick",
        "picture, a neutral face with pink lipstick",
        "dark red lipstick on a surprised woman",
        "portrait of a man with a bun, blue eyes and lipstick, red background",
        "person, lipstick",
    ),
    "glasses": (
        "a smiling woman with short blonde hair, grey eyes and round brown glasses on a green background",
        "cartoon of a sad man, glasses",
        "a person with purple lipstick and a black pencil mustache and square glasses",
        "picture, a neutral face with sunglasses",
        "round glasses on a surprised woman",
        "portrait of a man with a bun, blue eyes and glasses, red background",
        "person, glasses",
    ),
}

# The composed sets' last phrasings, with FINAL_SEEDS: written before the second round of composition tuning (how
# overlapping regions combine and which mustache recipe composes, on TUNE_PAIR and the HELD_OUT seeds), which
# followed FRESH_SETS' figures. That round's figures are read here, where nothing was chosen.
FINAL_SETS = {
    ("mustache", "lipstick"): (
        "portrait of a sad woman with a grey pencil mustache and purple lipstick on an orange background",
        "mustache, lipstick",
        "a bald man in a drawing, wearing pink lipstick, with a ginger handlebar mustache",
    ),
    ("mustache", "lipstick", "glasses"): (
        "portrait of a sad woman with a grey pencil mustache, purple lipstick and glasses on an orange background",
        "mustache, lipstick, glasses",
        "a bald man in a drawing, wearing pink lipstick and sunglasses, with a ginger handlebar mustache",
    ),
}

# The composed sets' phrasings for a third round of composition tuning (compositing in pixels, on TUNE_PAIR and the
# HELD_OUT seeds), with LAST_SEEDS: written before that round began, with FINAL_SETS' figures in hand.
LAST_SETS = {
    ("mustache", "lipstick"): (
        "a smiling man with curly black hair, a black chevron mustache and red lipstick, teal background",
        "a photo of a person with lipstick and a mustache",
        "lipstick, brown mustache, portrait of a neutral woman with grey eyes",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a smiling man with curly black hair, a black chevron mustache, red lipstick and glasses, teal background",
        "a photo of a person with glasses, lipstick and a mustache",
        "sunglasses, lipstick, brown mustache, portrait of a neutral woman with grey eyes",
    ),
}

# The composed sets' phrasings for a fourth round of composition tuning (regions that follow each face, on TUNE_PAIR,
# the HELD_OUT seeds and the FINAL set), with NEXT_SEEDS: written before that round began, with LAST_SETS' figures in
# hand.
NEXT_SETS = {
    ("mustache", "lipstick"): (
        "a drawing of a surprised woman with long brown hair, dark red lipstick and a black handlebar mustache",
        "mustache and lipstick on a neutral man",
        "a photo of a smiling person with blue eyes, a grey mustache and pink lipstick, yellow background",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a drawing of a surprised woman with long brown hair, dark red lipstick, glasses and a black handlebar "
        "mustache",
        "mustache, glasses and lipstick on a neutral man",
        "a photo of a smiling person with blue eyes, sunglasses, a grey mustache and pink lipstick, yellow background",
    ),
}

# The composed sets' phrasings for a fifth round (which words each LoRA's own prompt keeps from the image's, on
# NEXT_SETS), with SIXTH_SEEDS: written before that round began, with NEXT_SETS' figures in hand.
SIXTH_SETS = {
    ("mustache", "lipstick"): (
        "a surprised man with short grey hair, purple lipstick and a brown pencil mustache on a blue background",
        "portrait with lipstick and mustache",
        "a drawing of a sad person, black mustache, dark red lipstick",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a surprised man with short grey hair, purple lipstick, square glasses and a brown pencil mustache on a "
        "blue background",
        "portrait with glasses, lipstick and mustache",
        "a drawing of a sad person, black mustache, sunglasses, dark red lipstick",
    ),
}

# The composed sets' phrasings for a round on regularization images in the recipes, with SEVENTH_SEEDS: written
# before that round began, with SIXTH_SETS' figures in hand.
SEVENTH_SETS = {
    ("mustache", "lipstick"): (
        "a photo of a neutral woman with curly red hair, a grey chevron mustache and pink lipstick",
        "lipstick and a mustache, smiling person, green background",
        "a mustache with lipstick in a drawing of a sad man",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a photo of a neutral woman with curly red hair, round glasses, a grey chevron mustache and pink lipstick",
        "lipstick, sunglasses and a mustache, smiling person, green background",
        "a mustache with lipstick and glasses in a drawing of a sad man",
    ),
}

# The composed sets' phrasings, with EIGHTH_SEEDS: written after SEVENTH_SETS was read and the mustache's caption
# dropout was taken back on its figures, for the figure of what is then recommended.
EIGHTH_SETS = {
    ("mustache", "lipstick"): (
        "a drawing of a smiling woman with short red hair, pink lipstick and a black chevron mustache",
        "a photo of a sad man, lipstick, mustache",
        "portrait of a neutral bald person with a brown handlebar mustache and dark red lipstick, orange background",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a drawing of a smiling woman with short red hair, pink lipstick, round glasses and a black chevron mustache",
        "a photo of a sad man, lipstick, sunglasses, mustache",
        "portrait of a neutral bald person with glasses, a brown handlebar mustache and dark red lipstick, orange "
        "background",
    ),
}

# The composed sets' phrasings, with NINTH_SEEDS: written with NINTH, after EIGHTH_SETS was read and before a round
# on which UNet layers the mustache trains.
NINTH_SETS = {
    ("mustache", "lipstick"): (
        "a photo of a surprised person with curly grey hair, purple lipstick and a ginger pencil mustache",
        "mustache and red lipstick, neutral woman",
        "a drawing of a smiling bald man with a black handlebar mustache and pink lipstick on a blue background",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a photo of a surprised person with curly grey hair, purple lipstick, sunglasses and a ginger pencil mustache",
        "mustache, round glasses and red lipstick, neutral woman",
        "a drawing of a smiling bald man with square glasses, a black handlebar mustache and pink lipstick on a blue "
        "background",
    ),
}

# The composed sets' phrasings, with TENTH_SEEDS: written with TENTH, after NINTH_SETS was read, before any further
# tuning.
TENTH_SETS = {
    ("mustache", "lipstick"): (
        "a drawing of a sad man with curly brown hair, a grey handlebar mustache and purple lipstick",
        "lipstick, mustache, smiling woman on a yellow background",
        "a photo of a surprised bald person with red lipstick and a black pencil mustache",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a drawing of a sad man with curly brown hair, round glasses, a grey handlebar mustache and purple lipstick",
        "lipstick, sunglasses, mustache, smiling woman on a yellow background",
        "a photo of a surprised bald person with red lipstick, square glasses and a black pencil mustache",
    ),
}

# The composed sets' phrasings, with ELEVENTH_SEEDS: written with ELEVENTH, before TENTH_SETS' figures were seen
# and before any further tuning.
ELEVENTH_SETS = {
    ("mustache", "lipstick"): (
        "a neutral man with long black hair, a ginger pencil mustache and pink lipstick on a grey background",
        "photo of a smiling woman, mustache and lipstick",
        "a drawing with dark red lipstick and a brown chevron mustache, bald person, blue eyes",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a neutral man with long black hair, square glasses, a ginger pencil mustache and pink lipstick on a grey "
        "background",
        "photo of a smiling woman, mustache, sunglasses and lipstick",
        "a drawing with dark red lipstick, round glasses and a brown chevron mustache, bald person, blue eyes",
    ),
}

# The composed sets' phrasings, with TWELFTH_SEEDS: written with TWELFTH, before ELEVENTH_SETS was read.
TWELFTH_SETS = {
    ("mustache", "lipstick"): (
        "a smiling bald woman with grey eyes, a brown handlebar mustache and dark red lipstick on a green background",
        "neutral face, lipstick and mustache, photo",
        "portrait of a sad man with long brown hair, purple lipstick and a ginger mustache, teal background",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a smiling bald woman with grey eyes, round glasses, a brown handlebar mustache and dark red lipstick on a "
        "green background",
        "neutral face, glasses, lipstick and mustache, photo",
        "portrait of a sad man with long brown hair, sunglasses, purple lipstick and a ginger mustache, teal "
        "background",
    ),
}

# The composed sets' phrasings, with THIRTEENTH_SEEDS: written with THIRTEENTH, before TWELFTH_SETS was read.
THIRTEENTH_SETS = {
    ("mustache", "lipstick"): (
        "a neutral bald man with green eyes, a grey chevron mustache and pink lipstick on a yellow background",
        "drawing, mustache and lipstick, sad face",
        "portrait of a surprised woman with short blonde hair, red lipstick and a black handlebar mustache, orange "
        "background",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a neutral bald man with green eyes, square glasses, a grey chevron mustache and pink lipstick on a yellow "
        "background",
        "drawing, glasses, mustache and lipstick, sad face",
        "portrait of a surprised woman with short blonde hair, round glasses, red lipstick and a black handlebar "
        "mustache, orange background",
    ),
}

# The composed sets' phrasings, with FOURTEENTH_SEEDS: written with FOURTEENTH, before THIRTEENTH_SETS was read.
FOURTEENTH_SETS = {
    ("mustache", "lipstick"): (
        "a smiling woman with curly red hair, dark red lipstick and a brown pencil mustache on a grey background",
        "photo, mustache, lipstick, a neutral face",
        "portrait of a man with long grey hair, green eyes, a ginger chevron mustache and pink lipstick",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a smiling woman with curly red hair, round glasses, dark red lipstick and a brown pencil mustache on a grey "
        "background",
        "photo, sunglasses, mustache, lipstick, a neutral face",
        "portrait of a man with long grey hair, green eyes, square black glasses, a ginger chevron mustache and pink "
        "lipstick",
    ),
}

FIFTEENTH_SETS = {
    ("mustache", "lipstick"): (
        "a surprised man with short black hair, pink lipstick and a grey chevron mustache on an orange background",
        "cartoon, lipstick, mustache, a sad face",
        "portrait of a woman with a bun, brown eyes, a black handlebar mustache and red lipstick",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a surprised man with short black hair, square glasses, pink lipstick and a grey chevron mustache on an "
        "orange background",
        "cartoon, glasses, lipstick, mustache, a sad face",
        "portrait of a woman with a bun, brown eyes, round red glasses, a black handlebar mustache and purple "
        "lipstick",
    ),
}

SIXTEENTH_SETS = {
    ("mustache", "lipstick"): (
        "a neutral woman with long black hair, red lipstick and a brown handlebar mustache on a blue background",
        "drawing, mustache, lipstick, a surprised face",
        "portrait of a man with curly blonde hair, grey eyes, a ginger pencil mustache and purple lipstick",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a neutral woman with long black hair, round black glasses, red lipstick and a brown handlebar mustache on a "
        "blue background",
        "drawing, glasses, mustache, lipstick, a surprised face",
        "portrait of a man with curly blonde hair, grey eyes, sunglasses, a ginger pencil mustache and purple "
        "lipstick",
    ),
}

# Written at the start of the round that followed SIXTEENTH (the single LoRAs' training length, and the lock's newer
# peft and transformers), with SIXTEENTH's figures in hand and nothing tuned on these.
SEVENTEENTH_SETS = {
    ("mustache", "lipstick"): (
        "a smiling woman with short blonde hair, purple lipstick and a black chevron mustache on a green background",
        "picture, lipstick, mustache, a neutral face",
        "portrait of a man with a bun, blue eyes, a brown pencil mustache and pink lipstick",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a smiling woman with short blonde hair, sunglasses, purple lipstick and a black chevron mustache on a green "
        "background",
        "picture, mustache, glasses, lipstick, a neutral face",
        "portrait of a man with a bun, blue eyes, square brown glasses, a grey pencil mustache and dark red lipstick",
    ),
}

# Written at the start of the round that asked whether LoRAs whose attributes seldom draw in the same latent pixel
# compose as well as they show alone (the mustache with the glasses, the lipstick with the glasses), beside the pair
# and triple, with SEVENTEENTH's figures in hand and nothing tuned on these.
EIGHTEENTH_SETS = {
    ("mustache", "lipstick"): (
        "a surprised man with long brown hair, pink lipstick and a grey handlebar mustache on a red background",
        "photo, mustache, lipstick, a smiling face",
        "drawing of a woman with a bun, green eyes, a black pencil mustache and dark red lipstick",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a surprised man with long brown hair, round black glasses, pink lipstick and a grey handlebar mustache on a "
        "red background",
        "photo, lipstick, glasses, mustache, a smiling face",
        "drawing of a woman with a bun, green eyes, sunglasses, a black pencil mustache and dark red lipstick",
    ),
    ("mustache", "glasses"): (
        "a surprised man with long brown hair, square brown glasses and a grey handlebar mustache on a red background",
        "photo, glasses, mustache, a smiling face",
        "drawing of a woman with a bun, green eyes, sunglasses and a ginger chevron mustache",
    ),
    ("lipstick", "glasses"): (
        "a surprised woman with long brown hair, round black glasses and pink lipstick on a red background",
        "photo, lipstick, glasses, a smiling face",
        "drawing of a man with a bun, green eyes, square glasses and dark red lipstick",
    ),
}

# Written when EIGHTEENTH had shown the lipstick alone by the recommended way at 91% (99% on the whole image), before
# the round on the lipstick's region (its box, or where it changes the latent), which reads SEVENTEENTH and
# EIGHTEENTH; its figure is read here, where nothing was chosen.
NINETEENTH_SETS = {
    ("mustache", "lipstick"): (
        "a sad woman with short black hair, blue eyes, red lipstick and a brown chevron mustache on a grey background",
        "cartoon, lipstick, mustache, a surprised face",
        "photo of a man with curly grey hair, a ginger handlebar mustache and purple lipstick",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a sad woman with short black hair, blue eyes, square black glasses, red lipstick and a brown chevron mustache "
        "on a grey background",
        "cartoon, mustache, lipstick, glasses, a surprised face",
        "photo of a man with curly grey hair, sunglasses, a ginger handlebar mustache and purple lipstick",
    ),
}

# Written at the start of the round on the mustache trained at the noise levels it composes at (a timestep range,
# kohya's min_timestep / max_timestep), with NINETEENTH's figures in hand; that round reads SEVENTEENTH to
# NINETEENTH, and its figure is read here, where nothing was chosen.
TWENTIETH_SETS = {
    ("mustache", "lipstick"): (
        "a smiling woman with long brown hair, green eyes, a black pencil mustache and pink lipstick",
        "lipstick and mustache, cartoon portrait, teal background",
        "a neutral man with short grey hair, a grey handlebar mustache and dark red lipstick",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a smiling woman with long brown hair, green eyes, round black glasses, a black pencil mustache and pink "
        "lipstick",
        "glasses, lipstick and mustache, cartoon portrait, teal background",
        "a neutral man with short grey hair, sunglasses, a grey handlebar mustache and dark red lipstick",
    ),
}

# Written at the start of the round on recipes that reach their quality in fewer, larger steps (a training step's
# cost hardly grows with its batch on 2 cores), with TWENTIETH's figures in hand; that round reads SEVENTEENTH to
# TWENTIETH, and its figure is read here, where nothing was chosen.
TWENTY_FIRST_SETS = {
    ("mustache", "lipstick"): (
        "a surprised man with short brown hair, grey eyes, a ginger pencil mustache and dark pink lipstick",
        "mustache and lipstick, photo portrait, yellow background",
        "a smiling woman with curly black hair, a brown handlebar mustache and red lipstick",
    ),
    ("mustache", "lipstick", "glasses"): (
        "a surprised man with short brown hair, grey eyes, square brown glasses, a ginger pencil mustache and dark "
        "pink lipstick",
        "mustache, glasses and lipstick, photo portrait, yellow background",
        "a smiling woman with curly black hair, sunglasses, a brown handlebar mustache and red lipstick",
    ),
}

SETS = {"tune": (TUNE, TUNE_SEEDS), "held-out": (HELD_OUT, HELD_OUT_SEEDS), "fresh": (FRESH, FRESH_SEEDS),
        "final": (FINAL, FINAL_SEEDS), "next": (NEXT, NEXT_SEEDS), "seventh": (SEVENTH, SEVENTH_SEEDS),
        "eighth": (EIGHTH, EIGHTH_SEEDS), "ninth": (NINTH, NINTH_SEEDS),
        "tenth": (TENTH, TENTH_SEEDS), "eleventh": (ELEVENTH, ELEVENTH_SEEDS),
        "twelfth": (TWELFTH, TWELFTH_SEEDS), "thirteenth": (THIRTEENTH, THIRTEENTH_SEEDS),
        "fourteenth": (FOURTEENTH, FOURTEENTH_SEEDS), "fifteenth": (FIFTEENTH, FIFTEENTH_SEEDS),
        "sixteenth": (SIXTEENTH, SIXTEENTH_SEEDS), "seventeenth": (SEVENTEENTH, SEVENTEENTH_SEEDS)}
# The composed sets' phrasings and seeds by name, as SETS is the singles' (bench_methods.py adds its own held-out).
COMPOSED_SETS = {"tune": ({("mustache", "lipstick"): TUNE_PAIR}, TUNE_SEEDS), "fresh": (FRESH_SETS, FRESH_SEEDS),
                 "final": (FINAL_SETS, FINAL_SEEDS), "last": (LAST_SETS, LAST_SEEDS),
                 "next": (NEXT_SETS, NEXT_SEEDS),
                 "sixth": (SIXTH_SETS, SIXTH_SEEDS), "seventh": (SEVENTH_SETS, SEVENTH_SEEDS),
                 "eighth": (EIGHTH_SETS, EIGHTH_SEEDS), "ninth": (NINTH_SETS, NINTH_SEEDS),
                 "tenth": (TENTH_SETS, TENTH_SEEDS), "eleventh": (ELEVENTH_SETS, ELEVENTH_SEEDS),
                 "twelfth": (TWELFTH_SETS, TWELFTH_SEEDS), "thirteenth": (THIRTEENTH_SETS, THIRTEENTH_SEEDS),
                 "fourteenth": (FOURTEENTH_SETS, FOURTEENTH_SEEDS),
                 "fifteenth": (FIFTEENTH_SETS, FIFTEENTH_SEEDS),
                 "sixteenth": (SIXTEENTH_SETS, SIXTEENTH_SEEDS),
                 "seventeenth": (SEVENTEENTH_SETS, SEVENTEENTH_SEEDS),
                 "eighteenth": (EIGHTEENTH_SETS, EIGHTEENTH_SEEDS),
                 "nineteenth": (NINETEENTH_SETS, NINETEENTH_SEEDS),
                 "twentieth": (TWENTIETH_SETS, TWENTIETH_SEEDS),
                 "twenty-first": (TWENTY_FIRST_SETS, TWENTY_FIRST_SEEDS)}


def words(prompts) -> set[str]:
    return {word.strip(",") for prompt in prompts for word in prompt.split()}


def every_phrasing() -> list[str]:
    """Every phrasing of every set, singles' and composed (TUNE_PAIR is COMPOSED_SETS' tune), each as often as
    the sets hold it."""
    tables = [table for table, _ in (*SETS.values(), *COMPOSED_SETS.values())]
    return [prompt for table in tables for prompts in table.values() for prompt in prompts]


def check_vocabulary(tokenizer) -> list[str]:
    """The words of every phrasing that the toy tokenizer splits (a word the base never saw): none, we hope."""
    return sorted(word for word in words(every_phrasing()) if len(tokenizer.tokenize(word)) != 1)


def check_not_training_captions(faces: int = 20_000) -> list[str]:
    """Phrasings that are a caption the generator writes (for any of the first `faces` seeds, any attributes)."""
    from loramix.toy.face_spec import caption, sample_face

    captions = {caption(sample_face(seed, *flags)) for seed in range(faces)
                for flags in ((True, False, False), (False, True, False), (False, False, True))}
    return sorted(set(every_phrasing()) & captions)
