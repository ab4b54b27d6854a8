"""Trait data: the paper's Big5-Chat where a user has it, else a look-alike made offline.

Big5-Chat (Li et al. 2024) holds 10k dialogues per Big Five condition. Where it cannot be
downloaded (no model hub here, nor in CI) the base model writes its own: for each everyday
user prompt it answers under contrastive persona guidance (the condition's persona against
the opposite level's: `models.chat` with guidance scale 1 + gamma). The stored example
keeps only user -> assistant, without the persona prompt, so fine-tuning must put the
trait into the weights.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import datasets

from . import cache, personas, progress
from .artifacts import atomic_dir, read_json, write_json
from .profiles import CONDITIONS, Profile

DATA_VERSION = 1  # bump when generation or filtering changes what a cache holds
BIG5CHAT_HUB_ID = "wenkai-li/big5_chat"
BIG5CHAT_COLUMNS = ("train_instruction", "train_input", "train_output", "trait", "level")
HELDOUT_EVERY = 8  # every 8th prompt of the bank is held out of training (persona_shift, RQ4)
OVERSAMPLE = 1.15  # candidates per wanted dialogue; the filter dropped 5 of 40 in a pilot


class DataError(ValueError):
    """Bad or missing trait data; the message names the file, column or condition."""


# The user-prompt bank: written for this project (not taken from any data set), everyday
# requests and conversation openers of varied form. It must not overlap the BFI interview
# questions used for evaluation (tests/test_data.py checks it).
USER_PROMPTS: tuple[str, ...] = (
    # --- daily life ---
    'What did you have for breakfast this morning?',
    'How was your weekend?',
    'I just got home from a really long day. How was yours?',
    'Any plans for tonight?',
    "What's the first thing you do when you wake up?",
    "My alarm didn't go off and I was late again. Has that ever happened to you?",
    'How do you usually spend a rainy Sunday?',
    'I finally cleaned out my closet today.',
    'The power went out in my building for three hours last night.',
    'What does a normal Tuesday look like for you?',
    "I'm trying to get to bed earlier. Any tricks that work for you?",
    "My neighbour's dog barks all night. What would you do?",
    'How do you keep your apartment tidy?',
    'I locked myself out this morning and had to wait for a locksmith.',
    "What's on your to-do list this week?",
    'Do you prefer mornings or evenings?',
    'I spilled coffee all over my shirt right before a meeting.',
    'How do you feel about doing laundry?',
    'My commute took an hour and a half today because of traffic.',
    "What's your favourite part of the day?",
    "I'm thinking of rearranging my living room furniture.",
    'How do you unwind after a stressful day?',
    'Tell me about your morning routine.',
    'I just moved into a new place and it still feels strange.',
    'What would your perfect lazy day look like?',
    'My phone battery died in the middle of a call.',
    'Describe your ideal weekend.',
    "It's been raining for a week straight here.",
    'How do you handle grocery shopping?',
    "I forgot my best friend's birthday yesterday.",
    # --- work and study ---
    'I have a job interview tomorrow. Any advice?',
    'My boss just gave me a huge project with a tight deadline.',
    'How do you stay focused when working from home?',
    'A coworker keeps taking credit for my ideas. What should I do?',
    "I'm thinking about asking for a raise.",
    "What's the best job you've ever had?",
    "I have three exams next week and I haven't started studying.",
    'How do you deal with a really boring meeting?',
    'My team is switching to a new software system and everyone hates it.',
    "Should I go back to school for a master's degree?",
    'I got some harsh feedback on my presentation today.',
    'What do you think makes a good manager?',
    "I've been offered a promotion but it means moving to another city.",
    'How do you organise your workday?',
    "My group project partners aren't doing their share.",
    "I'm starting a new job on Monday.",
    'What would you do if you could change careers tomorrow?',
    'How do you handle a long list of emails after a holiday?',
    "I just finished a big report and I'm exhausted.",
    'Do you like working in a team or on your own?',
    "My internship ends next month and I don't know what comes next.",
    "What's a skill you wish you had learned earlier?",
    'My manager wants me to lead the team meeting on Friday.',
    'How do you prepare for an important deadline?',
    "I'm thinking of starting my own small business.",
    'A client yelled at me on the phone today.',
    'What do you think about open-plan offices?',
    'How do you take notes in a lecture?',
    'I keep getting distracted by my phone while studying.',
    'The office is organising a team-building retreat next month.',
    # --- hobbies and leisure ---
    'What do you like to do in your free time?',
    'I just started learning to play the guitar.',
    'Have you read any good books lately?',
    "What's a hobby you'd love to pick up?",
    "I'm thinking of joining a running club.",
    'What kind of music do you listen to?',
    'I tried painting for the first time this weekend.',
    'Do you play any video games?',
    "What's the last movie you watched?",
    'I want to start a vegetable garden on my balcony.',
    'How do you feel about board game nights?',
    "I've been knitting a scarf for three months now.",
    "What's your favourite season for outdoor activities?",
    'My friend invited me to go rock climbing on Saturday.',
    'Do you collect anything?',
    "I've been getting into photography lately.",
    "What's a TV show you could watch over and over?",
    "I'm learning to bake bread.",
    'How do you pick which book to read next?',
    'I signed up for a pottery class.',
    'Do you enjoy going to concerts?',
    "I'm thinking about trying stand-up comedy at an open mic.",
    "What do you do when you're bored?",
    'I just finished a thousand-piece jigsaw puzzle.',
    'Have you ever tried birdwatching?',
    'I bought a telescope and want to look at the stars.',
    "What's your take on podcasts?",
    'My book club is reading a mystery novel this month.',
    "I'm teaching myself to draw comics.",
    'How would you spend a free afternoon in a big city?',
    # --- food and cooking ---
    "What's your favourite meal to cook?",
    "I'm trying to decide what to make for dinner tonight.",
    'Do you like spicy food?',
    "What's the best restaurant you've ever been to?",
    'I burned the rice again.',
    'How do you feel about trying strange foods?',
    "I'm hosting a dinner party for six people on Saturday.",
    "What's your go-to comfort food?",
    'Should I learn to cook or keep ordering takeout?',
    "I've been thinking about going vegetarian.",
    'What do you usually eat for lunch?',
    "My grandmother's soup recipe never tastes the same when I make it.",
    'What would you bring to a potluck?',
    'Coffee or tea?',
    'I just discovered a new bakery around the corner.',
    'How do you plan your meals for the week?',
    "What's a food you hated as a kid but love now?",
    'I want to make a birthday cake from scratch.',
    'Do you eat breakfast every day?',
    'My roommate keeps eating my leftovers.',
    "What's your opinion on pineapple on pizza?",
    "I'm trying a new sushi place tonight.",
    'How do you feel about cooking for other people?',
    "What's the weirdest thing you've ever eaten?",
    'I want to cut down on sugar.',
    'Tell me about a dish you really love.',
    'What snack do you reach for late at night?',
    "I'm making soup from whatever is left in my fridge.",
    # --- travel and places ---
    'Where would you go if you could travel anywhere?',
    "I'm planning a road trip next summer.",
    "What's the best trip you've ever taken?",
    'Do you prefer the beach or the mountains?',
    'I just got back from a week in Lisbon.',
    'How do you pack for a long trip?',
    "My flight was cancelled and I'm stuck at the airport.",
    'Would you rather travel alone or with friends?',
    "I'm nervous about travelling abroad for the first time.",
    'What do you think of camping?',
    'I have a free weekend. Should I visit a new city or stay home?',
    'Tell me about your hometown.',
    "What's the most beautiful place you've seen?",
    "I'm thinking about a backpacking trip through South America.",
    'How do you deal with jet lag?',
    'My cousin wants me to visit her in Canada.',
    'Do you like staying in hotels?',
    "I got lost in a foreign city once and didn't speak the language.",
    "What's something you always bring when you travel?",
    "We're thinking of renting a cabin by a lake.",
    'Would you ever live in another country?',
    'I missed my train this morning.',
    "What's your favourite way to get around a new city?",
    "I'm planning a surprise trip for my partner.",
    'How do you choose where to go on holiday?',
    'What would you do on a long train journey?',
    'I just booked a cruise.',
    'My suitcase got lost on the way to my vacation.',
    # --- plans and decisions ---
    'Should I buy a new car or keep fixing my old one?',
    "I'm trying to decide between two apartments.",
    'What are your plans for the summer?',
    'How do you make big decisions?',
    "I've been saving money for a year. What should I do with it?",
    'My friend wants me to move in with her.',
    'Should I adopt a cat or a dog?',
    "I'm thinking about getting a tattoo.",
    'How do you plan a birthday party?',
    'I have to choose between two job offers.',
    "What's something you're looking forward to this year?",
    'I want to run a marathon next year.',
    'Should I tell my friend the truth about her new haircut?',
    "How do you decide what to do on New Year's Eve?",
    "I can't decide whether to go to my high school reunion.",
    'My sister asked me to plan her wedding.',
    "I'm thinking of selling most of my stuff and living simply.",
    'What would you do with a week off?',
    'How do you set goals for yourself?',
    "I'm considering learning a new language. Which one should I pick?",
    'Should I get a gym membership or work out at home?',
    "My lease is up next month and I don't know if I should renew.",
    'What would you do if you won a small lottery prize?',
    "I've been invited to two parties on the same night.",
    'How do you plan your budget each month?',
    "I'm thinking of redecorating my bedroom.",
    'Should I take a gap year before university?',
    'What would you do if you had a free month?',
    # --- opinions and ideas ---
    'What do you think about social media?',
    'Is it better to save money or spend it on experiences?',
    "What's the best invention of the last hundred years?",
    'Do you think people should work four days a week?',
    'What do you think about self-driving cars?',
    'Is it okay to cancel plans at the last minute?',
    "What's the most overrated thing people get excited about?",
    "Do you think it's important to have a routine?",
    'What makes a good friend?',
    'Should kids have phones?',
    "What's your opinion on modern art?",
    'Do you think people are more lonely today than before?',
    'Is it better to live in the city or the countryside?',
    'What do you think about tipping?',
    'Should everyone learn to cook?',
    "What's a common piece of advice you disagree with?",
    'Do you believe in luck?',
    'What do you think about people who talk loudly on the phone in public?',
    'Is it rude to check your phone during dinner?',
    'What do you think about working from cafes?',
    'Do you think everyone should travel at least once?',
    "What's your take on reality TV?",
    'Are paper books better than e-books?',
    'What do you think about surprise parties?',
    'Should people always follow the rules?',
    'What do you think about online dating?',
    'Is it better to be early or right on time?',
    'What makes a city a nice place to live?',
    'Do you think handwriting still matters?',
    # --- feelings and personal ---
    "I've been feeling a bit down lately.",
    "I'm really excited about something and I have to tell someone!",
    'My best friend is moving away next month.',
    'I had a big argument with my brother.',
    "I'm so nervous about my driving test tomorrow.",
    "Today was honestly one of the best days I've had in a while.",
    "I feel like I'm stuck in a rut.",
    "My cat is sick and I'm worried about her.",
    'I just found out I passed my exam!',
    'I miss my family a lot.',
    'Something embarrassing happened to me at work today.',
    "I'm feeling overwhelmed with everything going on.",
    'My plans for the weekend fell through.',
    'I got a really kind message from an old friend today.',
    'How do you cheer yourself up?',
    "I can't stop thinking about a mistake I made.",
    "I'm proud of myself for finally finishing a project.",
    'My friend forgot about our plans and I feel hurt.',
    "I'm so bored I could scream.",
    "I just got some bad news and I don't know how to feel.",
    'How do you deal with disappointment?',
    "I'm having trouble sleeping because my mind won't stop racing.",
    'My partner surprised me with flowers today.',
    'I feel nervous meeting new people.',
    "I've been really happy lately and I'm not sure why.",
    'Someone was rude to me in the supermarket.',
    "I'm dreading a difficult conversation I need to have.",
    'What makes you feel calm?',
    "I'm nervous about turning thirty.",
    'I feel like nobody listens to me at home.',
    # --- small talk and openers ---
    'Hi! How are you doing today?',
    'Hey, long time no see!',
    'Good morning!',
    "Nice weather today, isn't it?",
    "Hey there, what's new with you?",
    'Hello! Mind if I sit here?',
    'So, how do you know the host?',
    "Hi, I'm new around here.",
    'What a week, huh?',
    'Hey! Did you catch the game last night?',
    "How's your family doing?",
    'Hi! What brings you here today?',
    'Oh wow, I love your jacket.',
    'Happy Friday!',
    'Hey, are you going to the party on Saturday?',
    "Can you believe it's already December?",
    'Hi, I think we met at the conference last year.',
    'This line is taking forever.',
    'Hey, how was your holiday?',
    'Hello! Is this seat taken?',
    "It's so hot today.",
    'Hey, what are you reading?',
    'Hi! Are you enjoying the festival?',
    "Good evening! How's the food here?",
    'Morning! Did you sleep well?',
    'Hey stranger, where have you been?',
    'So what do you do for fun around here?',
    "Hi! I'm Sam. What's your name?",
    'Hey, what did you think of the movie?',
    'Well, that was an interesting meeting.',
    # --- advice requests ---
    'How can I make new friends as an adult?',
    "What's a good way to start exercising?",
    'How do I stop procrastinating?',
    'My friend is going through a hard time. How can I help?',
    'Any tips for saving money on groceries?',
    'How should I prepare for a first date?',
    "What's the best way to learn something new quickly?",
    "How do I tell my roommate she's too loud?",
    'I want to be more productive. Where should I start?',
    'How can I get better at public speaking?',
    'What should I get my dad for his birthday?',
    'How do I deal with a noisy upstairs neighbour?',
    'Any advice for a first-time pet owner?',
    'How do I stay motivated to keep learning a language?',
    "What's a good way to apologise to someone?",
    'How can I be more confident in meetings?',
    'My plants keep dying. What am I doing wrong?',
    'How do I say no to people without feeling guilty?',
    'What should I do on my first day at a new school?',
    'How can I keep in touch with friends who live far away?',
    'How do I make my small apartment feel bigger?',
    "What's the best way to handle criticism?",
    'How can I cut down on screen time?',
    'How do I choose a good gift for someone I barely know?',
    "What should I do if I can't stop worrying about money?",
    'Any tips for a long flight?',
    'How can I become a better listener?',
    "What's a good way to get over a breakup?",
    'How should I ask my neighbours to keep their music down?',
    'How do I start a conversation with someone at a party?',
    # --- short conversation with context ---
    'My friend just texted me: "We need to talk." What do you think that means?',
    "I told my coworker I'd cover her shift, but now I regret it.",
    "My kid asked me why the sky is blue and I didn't know what to say.",
    "My landlord says he's raising the rent by twenty percent.",
    "We're having a family barbecue and my uncle always starts arguments.",
    "My neighbour offered to water my plants while I'm away.",
    'A stranger helped me carry my groceries today.',
    'Our team lost the final match by one point.',
    'My roommate adopted a puppy without asking me.',
    "I was asked to give a toast at my friend's wedding.",
    'My phone screen cracked and the repair costs a fortune.',
    'The new café downstairs plays music way too loud.',
    'I met someone interesting at the bus stop today.',
    'My friend wants to borrow a lot of money from me.',
    "We just got a new manager and she's changing everything.",
    'My old teacher recognised me at the supermarket.',
    'I won a raffle at the school fair!',
    'The restaurant got my order wrong twice.',
    "My sister and I are planning a surprise for our parents' anniversary.",
    "I've been asked to volunteer at the animal shelter this weekend.",
    'A friend invited me to a costume party and I have nothing to wear.',
    'My car broke down on the highway this morning.',
    'The neighbours are throwing a street party on Saturday.',
    'My grandfather is teaching me to play chess.',
    "I finally called the friend I hadn't spoken to in years.",
)


def training_prompts() -> tuple[str, ...]:
    """The prompts the generator answers (the bank minus the held-out ones)."""
    return tuple(p for i, p in enumerate(USER_PROMPTS) if i % HELDOUT_EVERY != 0)


def heldout_prompts() -> tuple[str, ...]:
    """Prompts never used for training data: for measuring what fine-tuning changed."""
    return tuple(p for i, p in enumerate(USER_PROMPTS) if i % HELDOUT_EVERY == 0)


def normalize_text(text: str) -> str:
    """Lower case, letters and digits only, single spaces: for near-duplicate checks."""
    return " ".join(re.findall(r"[a-z0-9]+", text.lower()))


def token_overlap(a: str, b: str) -> float:
    """Jaccard overlap of the two texts' word sets (0 = disjoint, 1 = same words)."""
    sa, sb = set(normalize_text(a).split()), set(normalize_text(b).split())
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def near_duplicates(bank, questions, threshold: float = 0.6) -> list[tuple[str, str]]:
    """Pairs (prompt, question) that are equal after normalisation or share most words."""
    return [
        (p, q) for p in bank for q in questions
        if normalize_text(p) == normalize_text(q) or token_overlap(p, q) >= threshold
    ]


# --- quality filter ---------------------------------------------------------------------

MIN_WORDS = 4
MAX_CHARS = 1200
_DISCLAIMER = re.compile(
    r"\b(as an ai|as a language model|i am an ai|i'm an ai|i am a language model|"
    r"i'm a language model|i don't have personal|i do not have personal|ai assistant|"
    r"i don't have feelings|i do not have feelings|as an artificial)",
    re.IGNORECASE,
)
_STOPWORDS = frozenset(
    "the a an and or but to of in on at for with is are was were be been i you it my me "
    "we they he she this that not do so have has had just what how like your our".split()
)


def quality_issue(text: str) -> str | None:
    """Why a generated reply is unusable, or None if it is fine.

    Reasons: empty, too_short, too_long, ai_disclaimer, non_english, degenerate_loop,
    repetitive. Small models under strong guidance drift into loops and gibberish; these
    cheap checks catch the common failure shapes.
    """
    text = text.strip()
    if not text:
        return "empty"
    letters = [c for c in text if c.isalpha()]
    if sum(c.isascii() for c in letters) < 0.95 * len(letters):
        return "non_english"
    words = re.findall(r"[A-Za-z']+", text)
    if len(words) < MIN_WORDS:
        return "too_short"
    if len(text) > MAX_CHARS:
        return "too_long"
    if _DISCLAIMER.search(text):
        return "ai_disclaimer"
    lower = [w.lower() for w in words]
    trigrams = Counter(zip(lower, lower[1:], lower[2:], strict=False))
    sentences = [normalize_text(s) for s in re.split(r"[.!?]+", text) if normalize_text(s)]
    if (trigrams and max(trigrams.values()) >= 3) or len(sentences) != len(set(sentences)) \
            or re.search(r"(.)\1{5,}", text):
        return "degenerate_loop"
    if len(lower) >= 12 and len(set(lower)) / len(lower) < 0.4:
        return "repetitive"
    if len(words) >= 8 and sum(w.lower() in _STOPWORDS for w in words) < 0.1 * len(words):
        return "non_english"
    return None


# --- Big5-Chat --------------------------------------------------------------------------


def _offline() -> bool:
    import os

    flags = (os.environ.get(v, "") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    return any(f.strip().lower() in ("1", "true", "yes", "on") for f in flags)


def load_big5chat(path: str | None = None, n_per_condition: int | None = None,
                  seed: int = 0) -> datasets.DatasetDict:
    """Big5-Chat as ten chat-format SFT sets (keys = conditions, column "messages").

    `path` is a local copy of the CSV (columns train_instruction, train_input, train_output,
    trait, level); None reads the hub id `wenkai-li/big5_chat`. The instruction becomes the
    system turn (when not empty), the input the user turn, the output the assistant turn.
    `n_per_condition` samples that many rows per condition (seeded).
    """
    if path is None:
        if _offline():
            raise DataError(
                f"Big5-Chat ({BIG5CHAT_HUB_ID}) cannot be downloaded: the hub is offline "
                "(HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set). Pass a local copy of its CSV "
                "(profile field big5chat_path) or use the offline generator "
                "(profile field data_source='guided')."
            )
        try:
            raw = datasets.load_dataset(BIG5CHAT_HUB_ID, split="train")
        except Exception as err:  # noqa: BLE001 - any failure to reach the hub means the same
            raise DataError(
                f"could not load Big5-Chat from the hub ({BIG5CHAT_HUB_ID}: {err}). Pass a local "
                "copy of its CSV (big5chat_path) or use the offline generator "
                "(data_source='guided')."
            ) from err
        where = BIG5CHAT_HUB_ID
    else:
        file = Path(path).expanduser()
        if not file.is_file():
            raise DataError(f"Big5-Chat CSV {file} does not exist")
        try:
            raw = datasets.load_dataset("csv", data_files=str(file), split="train")
        except Exception as err:  # noqa: BLE001 - pandas/pyarrow parse errors vary
            raise DataError(f"could not read {file} as a CSV: {err}") from err
        where = str(file)
    missing = [c for c in BIG5CHAT_COLUMNS if c not in raw.column_names]
    if missing:
        raise DataError(f"{where} lacks column(s) {missing}; found {raw.column_names}")
    if len(raw) == 0:
        raise DataError(f"{where} has no rows")
    raw = raw.map(lambda r: {"condition": _condition_of(r["trait"], r["level"])})
    unknown = sorted({f"{r['trait']}/{r['level']}" for r in raw if r["condition"] is None})
    if unknown:
        raise DataError(f"{where} has rows with unknown trait/level {unknown[:5]}; traits must "
                        f"be Big Five names and levels high/low")
    raw = raw.filter(lambda r: bool((r["train_output"] or "").strip())
                     and bool((r["train_input"] or "").strip()))
    out = {}
    for cond in CONDITIONS:
        part = raw.filter(lambda r, c=cond: r["condition"] == c)
        if len(part) == 0:
            raise DataError(f"{where} has no usable rows for condition {cond!r}")
        if n_per_condition is not None:
            part = part.shuffle(seed=seed).select(range(min(n_per_condition, len(part))))
        out[cond] = part.map(_big5chat_messages, remove_columns=part.column_names).add_column(
            "condition", [cond] * len(part))
    return datasets.DatasetDict(out)


def _condition_of(trait: Any, level: Any) -> str | None:
    cond = f"{str(trait or '').strip().lower()}_{str(level or '').strip().lower()}"
    return cond if cond in CONDITIONS else None


def _big5chat_messages(row: dict) -> dict:
    messages = []
    if (row["train_instruction"] or "").strip():
        messages.append({"role": "system", "content": row["train_instruction"].strip()})
    messages.append({"role": "user", "content": row["train_input"].strip()})
    messages.append({"role": "assistant", "content": row["train_output"].strip()})
    return {"messages": messages}


# --- the offline generator --------------------------------------------------------------


def data_dir(profile: Profile, condition: str) -> Path:
    """`<artifacts>/data/<key>`: the cache of one condition's data (content-addressed)."""
    return DATA.entry(data_key(profile, condition))


def data_key(profile: Profile, condition: str) -> str:
    """A hash of everything the data depend on: the code, the fields `DATA` declares,
    the condition, its persona texts and the training prompts."""
    _check_condition(condition)
    return DATA.key(profile, DATA_VERSION, condition, _condition_personas(condition),
                    training_prompts())


def _check_condition(condition: str) -> None:
    if condition.startswith("domain_"):
        if condition.removeprefix("domain_") not in CHARACTERS:
            raise DataError(f"unknown character in {condition!r}; characters: "
                            f"{', '.join(CHARACTERS)}")
        return
    try:
        personas.split_condition(condition)
    except ValueError as err:
        raise DataError(str(err)) from None


def _condition_personas(condition: str) -> tuple[str, str]:
    """(persona, anti-persona) system prompts that drive guided generation."""
    if condition.startswith("domain_"):
        char = CHARACTERS[condition.removeprefix("domain_")]
        return char["persona"], PLAIN_ASSISTANT
    trait, level = personas.split_condition(condition)
    return personas.persona(trait, level), personas.persona(trait, personas.opposite(level))


def generate_trait_data(profile: Profile, condition: str, model=None,
                        tokenizer=None) -> datasets.Dataset:
    """One condition's SFT set ("messages": user -> assistant), cached under `data_dir`.

    Guided data: answers to the training prompts under contrastive persona guidance,
    trimmed to a sentence, quality-filtered; a data card (`data_card.json`) sits beside it.
    Big5-Chat data (`profile.data_source == "big5chat"`) are sampled from the loader.
    """
    return _generate(profile, [condition], model, tokenizer)[condition]


def trait_datasets(profile: Profile, extra_conditions: tuple[str, ...] = (),
                   model=None, tokenizer=None) -> datasets.DatasetDict:
    """Every selected condition's SFT set (cached), plus `extra_conditions` (e.g. a domain).

    Missing guided sets are generated together, in shared batches, so the fixed cost of
    each generation step is paid once for all conditions.
    """
    conditions = list(dict.fromkeys([*profile.conditions, *extra_conditions]))
    return datasets.DatasetDict(_generate(profile, conditions, model, tokenizer))


def _generate(profile: Profile, conditions: list[str], model, tokenizer) -> dict:
    profile = DATA.view(profile)  # reading an undeclared field raises
    for cond in conditions:
        _check_condition(cond)
    if profile.data_source not in ("guided", "big5chat"):
        raise DataError(f"unknown data_source {profile.data_source!r}; use 'guided' or 'big5chat'")
    todo = [c for c in conditions if not (data_dir(profile, c) / "data_card.json").exists()]
    guided = [c for c in todo if profile.data_source == "guided" or c.startswith("domain_")]
    made = {c: _from_big5chat(profile, c) for c in todo if c not in guided}
    if guided:
        made.update(_guided(profile, guided, model, tokenizer))
    empty = []
    for cond, (ds, card) in made.items():
        if len(ds) == 0:
            empty.append(f"{cond} (filtered: {card['filtered']})")
            continue
        card["key"] = data_key(profile, cond)
        with atomic_dir(data_dir(profile, cond)) as tmp:
            datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp / "dataset"))
            write_json(tmp / "data_card.json", card)
    if empty:
        raise DataError(f"no usable dialogues for {', '.join(empty)}; raise n_dialogues or "
                        "lower guidance_gamma")
    for c in conditions:
        cache.touch(data_dir(profile, c), DATA.name, profile.name,
                    {"condition": c, "n": profile.n_dialogues, "source": profile.data_source})
    return {c: datasets.load_from_disk(str(data_dir(profile, c) / "dataset"))["train"]
            for c in conditions}


def _from_big5chat(profile: Profile, condition: str) -> tuple[datasets.Dataset, dict]:
    start = time.perf_counter()
    ds = load_big5chat(profile.big5chat_path, profile.n_dialogues, profile.seed)[condition]
    card = {
        "condition": condition, "source": "big5chat",
        "path": profile.big5chat_path or BIG5CHAT_HUB_ID, "n_requested": profile.n_dialogues,
        "n_kept": len(ds), "filtered": {}, "seconds": round(time.perf_counter() - start, 2),
        "examples": [r["messages"] for r in ds.select(range(min(3, len(ds))))],
    }
    return ds, card


def _guided(profile: Profile, conditions: list[str], model, tokenizer) -> dict:
    """Guided answers for several conditions in shared batches: {condition: (data, card)}.

    Contrastive persona guidance through `models.chat` (system prompt = persona, negative
    prompt = anti-persona, guidance scale 1 + gamma), with rows of many conditions mixed.
    """
    from . import models

    if model is None or tokenizer is None:
        model = models.load_model(profile.model, dtype=profile.dtype, device=profile.device)
        tokenizer = models.load_tokenizer(profile.model)
    bank = training_prompts()
    wanted = profile.n_dialogues
    n_candidates = math.ceil(wanted * OVERSAMPLE)
    # the same prompts in the same order for every condition: conditions differ only in answers
    order = random.Random(profile.seed).sample(range(len(bank)), len(bank))
    ids = [order[k % len(bank)] for k in range(n_candidates)]
    convs, negs = [], []
    for cond in conditions:
        persona, anti = _condition_personas(cond)
        for i in ids:
            user = {"role": "user", "content": bank[i]}
            convs.append([{"role": "system", "content": persona}, user])
            negs.append([{"role": "system", "content": anti}, user])
    start = time.perf_counter()
    progress.log(f"stage data: {len(conditions)} condition(s) x {n_candidates} answers")
    replies = models.chat(
        model, tokenizer, convs, negative_conversations=negs,
        guidance_scale=1.0 + profile.guidance_gamma, max_new_tokens=profile.gen_max_new_tokens,
        temperature=profile.gen_temperature, top_p=profile.gen_top_p, seed=profile.seed,
        batch_size=profile.gen_batch_size,
    )
    seconds = (time.perf_counter() - start) / len(conditions)
    out = {}
    for k, cond in enumerate(conditions):
        mine = replies[k * n_candidates : (k + 1) * n_candidates]
        out[cond] = _filtered(profile, cond, bank, ids, mine, seconds, tokenizer)
    return out


def _filtered(profile: Profile, condition: str, bank, ids, replies, seconds: float,
              tokenizer) -> tuple[datasets.Dataset, dict]:
    from . import models

    persona, anti = _condition_personas(condition)
    rows, reasons = [], Counter()
    for i, reply in zip(ids, replies, strict=True):
        text = models.trim_to_sentence(reply)
        issue = quality_issue(text)
        if issue:
            reasons[issue] += 1
        elif len(rows) < profile.n_dialogues:
            rows.append({"messages": [{"role": "user", "content": bank[i]},
                                      {"role": "assistant", "content": text}],
                         "prompt_id": USER_PROMPTS.index(bank[i]), "condition": condition})
    ds = datasets.Dataset.from_list(rows) if rows else datasets.Dataset.from_dict(
        {"messages": [], "prompt_id": [], "condition": []})
    n = len(replies)
    card = {
        "condition": condition, "source": "guided", "model": profile.model,
        "persona": persona, "anti_persona": anti, "gamma": profile.guidance_gamma,
        "temperature": profile.gen_temperature, "top_p": profile.gen_top_p,
        "max_new_tokens": profile.gen_max_new_tokens, "seed": profile.seed,
        "n_requested": profile.n_dialogues, "n_candidates": n, "n_kept": len(rows),
        "filtered": dict(reasons),
        "filter_rates": {k: round(v / n, 4) for k, v in reasons.items()},
        "seconds": round(seconds, 2),  # this condition's share of a shared generation run
        "tokens_per_second": round(sum(len(tokenizer(r)["input_ids"]) for r in replies)
                                   / max(seconds, 1e-9), 1),
        "examples": [r["messages"] for r in rows[:3]],
    }
    return ds, card


# the data stage: what it reads (enforced by `DATA.view`) and whose source is its version
DATA = cache.Stage(
    "data",
    fields=("model", "dtype", "device", "data_source", "big5chat_path", "n_dialogues",
            "guidance_gamma", "gen_temperature", "gen_top_p", "gen_max_new_tokens",
            "gen_batch_size", "seed"),
    grid=("conditions",),
    code=(_generate, _guided, _filtered, _from_big5chat, quality_issue),
)


def data_card(profile: Profile, condition: str) -> dict:
    """The data card of one condition (generating its data first if needed)."""
    generate_trait_data(profile, condition)
    return read_json(data_dir(profile, condition) / "data_card.json")


# --- role-play characters (RQ4's domain vector) -----------------------------------------

PLAIN_ASSISTANT = (
    "You are a helpful AI assistant. Answer plainly, briefly and neutrally, with no "
    "particular personality or style."
)

CHARACTERS: dict[str, dict[str, Any]] = {
    "captain_mara": {
        "name": "Captain Mara Flint",
        "persona": (
            "You are Captain Mara Flint, a weathered old sea captain who sailed cargo ships "
            "across every ocean for forty years and now runs a small harbour tavern. You "
            "talk like a sailor: you say 'aye', call people 'sailor' or 'matey', and you "
            "compare everything to the sea, ships, storms, tides, wind and the crew you "
            "once commanded. You tell short salty stories from your voyages. Answer in "
            "character, in the first person."
        ),
        "keywords": (
            "aye", "sailor", "sailors", "matey", "sea", "seas", "ship", "ships", "sail",
            "sails", "sailing", "sailed", "harbour", "harbor", "storm", "storms", "tide",
            "tides", "wind", "winds", "deck", "crew", "captain", "ocean", "oceans", "wave",
            "waves", "anchor", "port", "voyage", "voyages", "compass", "shore", "salt",
            "salty", "tavern", "mast", "boat", "boats", "ahoy", "sea's",
        ),
    },
}
